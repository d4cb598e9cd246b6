"""REST API of channel attribution, SOP performance and campaign performance (DESIGN §4
`metrics/channels/`, `metrics/sops/`, `metrics/campaigns/`)."""

from rest_framework.response import Response
from rest_framework.views import APIView


class ChannelsView(APIView):
    def get(self, request):
        return Response({"results": []})


class SopsView(APIView):
    def get(self, request):
        return Response({"results": []})


class CampaignsView(APIView):
    def get(self, request):
        return Response({"results": []})
