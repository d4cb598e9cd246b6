"""Message templates: Jinja2's sandbox over one customer's fields, tags, stages and owner.

Messages are plain text, so nothing is escaped. An operator's template must not be able to burn a
worker's CPU or memory, so:

- at save time a template is refused (a 400 naming what) when it uses more than output
  expressions, `if` and `for`: no `set`, `with`, macros, includes, function or method calls,
  `**`; only the filters in `FILTERS`; loops nested at most `MAX_LOOP_DEPTH` deep;
- every render is bounded: `MAX_ITERATIONS` loop iterations in all, `MAX_OUTPUT` characters of
  text and `MESSAGE_TEMPLATE_RENDER_SECONDS` of CPU time. Past any of them the render stops with
  the reason (`TemplateLimitError`): a 400 when the template is saved or previewed, a skipped
  message with that reason when it is sent.

Templates written before the move to Jinja2 used Django's template syntax. `from_django_syntax`
rewrites one into this syntax (migration campaigns 0005 did so for the stored ones), and a template
saved in the old syntax is answered with its rewritten form.
"""

import time
from contextvars import ContextVar
from datetime import date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import jinja2
from django.conf import settings
from django.template import defaultfilters
from django.template.base import Lexer, TokenType, filter_re
from django.utils import formats, timezone
from django.utils.timezone import template_localtime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from jinja2 import nodes
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.sandbox import SandboxedEnvironment

from core.exceptions import ApplicationError
from core.people import staff_name

MAX_LENGTH = 4000         # characters of template source
MAX_OUTPUT = 8000         # characters of one rendered message
MAX_ITERATIONS = 1000     # loop iterations of one render, all loops together
MAX_LOOP_DEPTH = 2


class TemplateLimitError(Exception):
    """A render went past one of the limits; the message says which, for the operator."""


# --- The sandbox ---------------------------------------------------------------------------

class _Budget:
    def __init__(self) -> None:
        self.iterations_left = MAX_ITERATIONS
        self.seconds = settings.MESSAGE_TEMPLATE_RENDER_SECONDS
        # CPU time of this thread, not the wall clock: a busy machine does not fail templates.
        self.deadline = time.thread_time() + self.seconds

    def check_time(self) -> None:
        if time.thread_time() > self.deadline:
            raise TemplateLimitError(_("the template takes more than %(s)s s to render")
                                     % {"s": self.seconds})

    def spend(self, iterations: int) -> None:
        self.iterations_left -= iterations
        if self.iterations_left < 0:
            raise TemplateLimitError(_("the loops run more than %(n)d times in all")
                                     % {"n": MAX_ITERATIONS})


_budget: ContextVar[_Budget] = ContextVar("message_template_budget")


class _Bounded:
    """A loop's items, paid for from the render's budget when the loop starts; the time limit
    is checked at every item."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        budget = _budget.get()
        for item in self.items:
            budget.check_time()
            yield item


@jinja2.pass_context
def _bounded(context, value):
    """Wraps every `for` loop's iterable (set in by `_compile`, not nameable by authors)."""
    if isinstance(value, jinja2.Undefined):
        return ()
    budget = _budget.get()
    budget.check_time()
    items = list(_islice(value, budget.iterations_left + 1))
    budget.spend(len(items))
    return _Bounded(items)


def _islice(value, n: int) -> list:
    out = []
    if n <= 0:
        return out
    for item in value:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _local(value):
    """Dates and times in the system time zone, as Django's templates showed them."""
    return template_localtime(value) if isinstance(value, datetime) else value


def _date(value, arg=None):
    return defaultfilters.date(_local(value), arg)


def _time(value, arg=None):
    return defaultfilters.time(_local(value), arg)


def _replace(value, old, new, count=None):
    text, old, new = str(value), str(old), str(new)
    # Computed before the output cap sees it, so bounded here: "a"|replace("", long) grows fast.
    occurrences = text.count(old) if old else len(text) + 1
    if len(text) + occurrences * max(len(new) - len(old), 0) > MAX_OUTPUT:
        raise TemplateLimitError(_("the message is longer than %(n)d characters")
                                 % {"n": MAX_OUTPUT})
    return text.replace(old, new, -1 if count is None else count)


# The filters a template may use: Jinja2's that take bounded time and space on bounded input,
# and the Django ones templates written in Django's syntax used (same names, same output).
FILTERS = {name: JINJA_FILTERS[name] for name in (
    "abs", "capitalize", "count", "d", "default", "first", "float", "int", "items", "join",
    "last", "length", "list", "lower", "max", "min", "reverse", "round", "sort", "string", "sum", "title",
    "trim", "truncate", "unique", "upper", "wordcount")}
FILTERS.update({
    "add": defaultfilters.add, "capfirst": defaultfilters.capfirst, "date": _date,
    "default_if_none": defaultfilters.default_if_none,
    "floatformat": defaultfilters.floatformat, "replace": _replace, "time": _time,
    "truncatechars": defaultfilters.truncatechars, "yesno": defaultfilters.yesno,
})
_LOOP_FILTER = "__bounded"


def _finalize(value):
    """How an output expression's value becomes text: nothing for None and undefined names,
    dates and numbers as Django's templates showed them."""
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    if isinstance(value, date | time_of_day | Decimal | float | int) and not isinstance(
            value, bool):
        return formats.localize(_local(value))
    return value


class _Sandbox(SandboxedEnvironment):
    # Intercepted operators are also never folded at compile time, so `"x" * 10**9` cannot
    # exhaust the web process at save time either.
    intercepted_binops = frozenset({"*", "%"})

    def call_binop(self, context, operator, left, right):
        sequences = (str, list, tuple)
        if operator == "*" and (isinstance(left, sequences) or isinstance(right, sequences)):
            raise TemplateLimitError(_("“*” repeats text or lists, which message templates do "
                                       "not allow"))
        if operator == "%" and isinstance(left, str):
            raise TemplateLimitError(_("“%” formats text, which message templates do not "
                                       "allow"))
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj, attribute):
        # A dict is data: `attributes.items` is the key "items", never the method; and a
        # method of text, a list or a number is of no use where nothing can be called.
        if isinstance(obj, dict):
            return self.getitem(obj, attribute)
        if isinstance(obj, str | list | tuple | int | float | Decimal):
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        if isinstance(obj, dict):
            if argument in obj:
                return obj[argument]
            return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)


ENV = _Sandbox(autoescape=False, undefined=jinja2.ChainableUndefined, finalize=_finalize,
               auto_reload=False, cache_size=0)
ENV.globals.clear()                     # no range(), lipsum(), dict(), cycler(), namespace()
ENV.filters = {**FILTERS, _LOOP_FILTER: _bounded}


# --- Compiling: what a template may contain --------------------------------------------------

_ALLOWED = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.For, nodes.Name,
            nodes.Const, nodes.Getattr, nodes.Getitem, nodes.Slice, nodes.Filter, nodes.Test,
            nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos,
            nodes.CondExpr, nodes.Concat, nodes.Add, nodes.Sub, nodes.Mul, nodes.Div,
            nodes.FloorDiv, nodes.Mod, nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair,
            nodes.Keyword)
_REFUSED_WORDS = {
    nodes.Assign: "{% set %}", nodes.AssignBlock: "{% set %}", nodes.With: "{% with %}",
    nodes.Macro: "{% macro %}", nodes.CallBlock: "{% call %}", nodes.FilterBlock: "{% filter %}",
    nodes.Include: "{% include %}", nodes.Extends: "{% extends %}", nodes.Block: "{% block %}",
    nodes.Import: "{% import %}", nodes.FromImport: "{% from … import %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}", nodes.Pow: "**",
}


class _Refused(Exception):
    pass


def _check(node: nodes.Node, depth: int = 0) -> None:
    if isinstance(node, nodes.For):
        if node.recursive:
            raise _Refused(_("recursive loops are not allowed in a message template"))
        depth += 1
        if depth > MAX_LOOP_DEPTH:
            raise _Refused(_("loops nest at most %(n)d deep in a message template")
                           % {"n": MAX_LOOP_DEPTH})
    elif isinstance(node, nodes.Call):
        raise _Refused(_("calling a function or method is not allowed in a message template"))
    elif isinstance(node, nodes.Filter) and node.name not in FILTERS:
        raise _Refused(_("the filter “%(name)s” is not allowed in a message template; these "
                         "are: %(allowed)s") % {"name": node.name,
                                                "allowed": ", ".join(sorted(FILTERS))})
    elif not isinstance(node, _ALLOWED):
        what = _REFUSED_WORDS.get(type(node), type(node).__name__)
        raise _Refused(_("%(what)s is not allowed in a message template") % {"what": what})
    for child in node.iter_child_nodes():
        _check(child, depth)


@lru_cache(maxsize=512)
def _compile(source: str) -> jinja2.Template:
    """Parse, check and compile; raises TemplateSyntaxError or _Refused."""
    tree = ENV.parse(source)
    _check(tree)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None,
                                 lineno=loop.lineno)
    return ENV.from_string(tree)


def compile_template(source: str, *, path: str = "template") -> jinja2.Template:
    if not isinstance(source, str) or not source.strip():
        raise ApplicationError(_("%(path)s: write the message") % {"path": path})
    if len(source) > MAX_LENGTH:
        raise ApplicationError(_("%(path)s: at most %(n)d characters") % {"path": path,
                                                                           "n": MAX_LENGTH})
    if "\x00" in source:
        raise ApplicationError(_("%(path)s: must be text without NUL characters")
                               % {"path": path})
    try:
        return _compile(source)
    except _Refused as exc:
        raise ApplicationError(f"{path}: {exc}") from exc
    except jinja2.TemplateSyntaxError as exc:
        message = _("%(path)s: the template does not compile: %(error)s (line %(line)d)") % {
            "path": path, "error": exc.message, "line": exc.lineno}
        rewritten = _rewritten_if_django(source)
        if rewritten:
            message += " " + _("Message templates use Jinja2's syntax now; this one reads: "
                               "%(rewritten)s") % {"rewritten": rewritten}
        raise ApplicationError(message) from exc


def _rewritten_if_django(source: str) -> str | None:
    """The template in this syntax when it is a valid template in Django's, else None."""
    try:
        rewritten = from_django_syntax(source)
        _compile(rewritten)
    except (ConversionError, jinja2.TemplateSyntaxError, _Refused):
        return None
    return rewritten if rewritten != source else None


# --- Rendering -------------------------------------------------------------------------------

def render(template: jinja2.Template, context: dict[str, Any]) -> str:
    """The message's text; raises TemplateLimitError past a limit, or the error a template
    raised for this customer (an undefined name in arithmetic, a division by zero)."""
    budget = _Budget()
    token = _budget.set(budget)
    try:
        parts, size = [], 0
        for part in template.generate(context):
            size += len(part)
            if size > MAX_OUTPUT:
                raise TemplateLimitError(_("the message is longer than %(n)d characters")
                                         % {"n": MAX_OUTPUT})
            budget.check_time()
            parts.append(part)
    finally:
        _budget.reset(token)
    return "".join(parts).strip()


# The variables a template may use, as the editors list them (name, what it holds).
VARIABLES = (
    ("name", gettext_lazy("The customer's name (“customer” when none is known)")),
    ("customer.city", gettext_lazy("The customer's city; any field of the customer resource, e.g. "
                            "customer.total_spent, customer.last_order_at")),
    ("customer.attributes.level", gettext_lazy("A key of the customer's attributes")),
    ("owner.name", gettext_lazy("The owner's name as people write it (王芳)")),
    ("tags", gettext_lazy("The customer's tag names (a list: {% if '高价值客户' in tags %}…{% endif %})")),
    ("stages.value", gettext_lazy("The customer's stage key in a model (value, journey, aipl…)")),
    ("categories", gettext_lazy("Categories the customer has bought (a list)")),
    ("now", gettext_lazy("The moment the message is written")),
)


# What a template may read of a customer: the fields of the customer resource (DESIGN §4). A
# template gets these values, never the model instance, so it cannot walk relations to other
# customers (`customer.channel.customers.all`) or to staff accounts (`customer.owner.password`).
CUSTOMER_FIELDS = ("id", "external_id", "name", "phone", "gender", "city", "joined_at", "status",
                   "opted_out", "attributes", "orders_count", "total_spent", "first_order_at",
                   "last_order_at", "last_active_at")


def _customer_values(customer, owner: SimpleNamespace) -> SimpleNamespace:
    channel = getattr(customer, "channel", None)
    return SimpleNamespace(
        pk=getattr(customer, "id", None),
        **{name: getattr(customer, name, None) for name in CUSTOMER_FIELDS},
        channel=SimpleNamespace(code=channel.code, name=channel.name) if channel else None,
        owner=owner)


def context_for(customer, *, tags: list[str], stages: dict[str, str],
                categories: list[str]) -> dict[str, Any]:
    owner = customer.owner
    owner_values = SimpleNamespace(username=owner.get_username(),
                                   name=staff_name(owner))
    return {
        "customer": _customer_values(customer, owner_values),
        "name": customer.name or _("customer"),
        "tags": tags,
        "stages": stages,
        "categories": categories,
        "owner": owner_values,
        "now": timezone.localtime(),
    }


def sample_context() -> dict[str, Any]:
    """A believable customer for previews and save-time checks."""
    owner = SimpleNamespace(get_username=lambda: "op_wang", first_name="店长", last_name="王")
    customer = SimpleNamespace(
        id=1, external_id="wm_sample", name="林小姐", phone="13800000000", gender="female",
        city="杭州", channel=SimpleNamespace(code="store-qr", name="门店扫码"), owner=owner,
        joined_at=timezone.now(), status="active", opted_out=False,
        attributes={"level": "gold"}, orders_count=2, total_spent=Decimal("568.00"),
        first_order_at=timezone.now(), last_order_at=timezone.now(),
        last_active_at=timezone.now())
    return context_for(customer, tags=["新客户"], stages={"journey": "trust", "value": "growth",
                                                        "aipl": "purchase"},
                       categories=["护肤"])


def check_template(source: str, *, path: str = "template") -> str:
    """Compile and render for the sample customer; answers the rendered text."""
    template = compile_template(source, path=path)
    try:
        text = render(template, sample_context())
    except Exception as exc:   # a template error of any kind is the author's to fix
        raise ApplicationError(_("%(path)s: the template does not render: %(error)s")
                               % {"path": path, "error": exc}) from exc
    if not text:
        raise ApplicationError(_("%(path)s: the template renders to nothing") % {"path": path})
    return text


# --- Templates written in Django's syntax ----------------------------------------------------

class ConversionError(Exception):
    """A Django template uses something message templates have no equivalent for."""


_FORLOOP = {"counter": "index", "counter0": "index0", "revcounter": "revindex",
            "revcounter0": "revindex0", "first": "first", "last": "last"}
# Django filter → (its name here, arguments added after the template's own); None: dropped.
_DJANGO_FILTERS = {
    "default": ("default", ", true"), "default_if_none": ("default_if_none", ""),
    "join": ("join", ""), "add": ("add", ""), "truncatechars": ("truncatechars", ""),
    "date": ("date", ""), "time": ("time", ""), "floatformat": ("floatformat", ""),
    "yesno": ("yesno", ""), "length": ("length", ""), "first": ("first", ""),
    "last": ("last", ""), "upper": ("upper", ""), "lower": ("lower", ""),
    "title": ("title", ""), "capfirst": ("capfirst", ""), "wordcount": ("wordcount", ""),
    "safe": None,
}
_IF_OPERATORS = {"and", "or", "not", "in", "==", "!=", "<", ">", "<=", ">="}


def _django_operand(text: str) -> str:
    if text.startswith("_("):
        raise ConversionError(_("translated strings _(…) have no equivalent"))
    if text[0] in "\"'" or text[0].isdigit() or text[0] in "+-.":
        return text
    head, *rest = text.split(".")
    if head == "forloop":
        if len(rest) != 1 or rest[0] not in _FORLOOP:
            raise ConversionError(_("“%(name)s” has no equivalent") % {"name": text})
        return f"loop.{_FORLOOP[rest[0]]}"
    # Django calls what it finds; here a dict's items and keys are filters.
    if rest and rest[-1] in ("items", "keys"):
        return ".".join([head, *rest[:-1]]) + ("|items" if rest[-1] == "items" else "|list")
    return text


def _django_expression(token: str) -> str:
    """`var|filter:arg|filter` → `var|filter(arg)|filter`."""
    out, upto = "", 0
    for match in filter_re.finditer(token):
        if match.start() != upto:
            raise ConversionError(_("“%(token)s” does not parse") % {"token": token})
        if not out:
            first = match["constant"] or match["var"]
            if first is None:
                raise ConversionError(_("“%(token)s” does not parse") % {"token": token})
            out = _django_operand(first)
        else:
            name = match["filter_name"]
            if name not in _DJANGO_FILTERS:
                raise ConversionError(_("the filter “%(name)s” has no equivalent")
                                      % {"name": name})
            arg = match["constant_arg"] or match["var_arg"]
            if _DJANGO_FILTERS[name] is not None:
                here, more = _DJANGO_FILTERS[name]
                out += f"|{here}({_django_operand(arg)}{more})" if arg else f"|{here}"
        upto = match.end()
    if upto != len(token) or not out:
        raise ConversionError(_("“%(token)s” does not parse") % {"token": token})
    return out


def _django_condition(bits: list[str]) -> str:
    out = []
    for index, bit in enumerate(bits):
        if bit in _IF_OPERATORS:
            out.append(bit)
        elif bit == "is":
            out.append("is")
            if index + 1 < len(bits) and bits[index + 1] == "not":
                continue
            out.append("sameas")
        elif bit == "not" and out and out[-1] == "is":
            out.extend(["not", "sameas"])
        else:
            out.append(_django_expression(bit))
    return " ".join(out)


def _django_block(bits: list[str]) -> str:
    tag = bits[0]
    if tag in ("if", "elif"):
        return f"{{% {tag} {_django_condition(bits[1:])} %}}"
    if tag in ("else", "endif", "endfor"):
        return f"{{% {tag} %}}"
    if tag == "empty":
        return "{% else %}"
    if tag == "for":
        if "in" not in bits:
            raise ConversionError(_("“for” without “in”"))
        at = bits.index("in")
        names = " ".join(bits[1:at]).replace(" ,", ",")
        reverse = bits[-1] == "reversed"
        items = _django_expression(" ".join(bits[at + 1:len(bits) - reverse]))
        return f"{{% for {names} in {items}{'|reverse' if reverse else ''} %}}"
    if tag == "firstof" and "as" not in bits:
        return "{{ " + " or ".join(_django_expression(b) for b in bits[1:]) + " }}"
    if tag == "now" and len(bits) == 2:
        return f"{{{{ now|date({bits[1]}) }}}}"
    if tag in ("autoescape", "endautoescape"):
        return ""
    raise ConversionError(_("{%% %(tag)s %%} has no equivalent") % {"tag": tag})


def from_django_syntax(source: str) -> str:
    """The same template in this module's syntax; raises ConversionError naming what has no
    equivalent (`{% lorem %}`, `{% cycle %}`, a filter outside the list, …)."""
    out, skipping, verbatim = [], False, False
    for token in Lexer(source).tokenize():
        kind, contents = token.token_type, token.contents
        if skipping:            # inside {% comment %}
            skipping = not (kind == TokenType.BLOCK and contents == "endcomment")
        elif verbatim and kind == TokenType.TEXT:
            out.append(contents)
        elif kind == TokenType.TEXT:
            # Django leaves an unpaired "{{" as text; Jinja2 would read it as a tag.
            marked = any(mark in contents for mark in ("{{", "{%", "{#"))
            out.append(f"{{% raw %}}{contents}{{% endraw %}}" if marked else contents)
        elif kind == TokenType.VAR:
            out.append(f"{{{{ {_django_expression(contents)} }}}}")
        elif kind == TokenType.COMMENT:
            out.append(f"{{# {contents} #}}")
        else:
            bits = token.split_contents()
            if bits[0] == "comment":
                skipping = True
            elif bits[0] in ("verbatim", "endverbatim"):
                verbatim = bits[0] == "verbatim"
                out.append("{% raw %}" if verbatim else "{% endraw %}")
            else:
                out.append(_django_block(bits))
    return "".join(out)
