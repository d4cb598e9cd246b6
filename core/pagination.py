from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=&page_size=` with at most 500 a page (DESIGN §4)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
