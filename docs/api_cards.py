"""The API reference of the lessons' website, read from the exported modules without importing them (no torch needed):
for every name in a module's `__all__`, a card (`py:function`, `py:class` with its public methods, or `py:data`)
holding its signature and docstring, placed in the page of the notebook that defines it, right after the cell that
defines it (nbdev's `# %% ../nbs/NOTEBOOK.ipynb #CELL` markers say which), and a page listing them all."""
from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

CELL_MARKER = re.compile(r"^# %% \.\./nbs/(?P<notebook>[\w-]+)\.ipynb #(?P<cell>\w+)", re.M)


@dataclass
class Card:
    "One exported name: where it is defined and the MyST directive that documents it."
    module: str                       # deepminer.erase
    name: str                         # erase_mask
    notebook: str                     # 02_erase
    cell: str                         # the id of the notebook cell that defines it
    kind: str                         # function, class, method or data
    signature: str                    # "(activation, tau)" ; "" for data
    doc: str                          # the docstring (or a constant's comment)
    methods: list[Card] = field(default_factory=list)
    value: str = ""                   # a short constant's value, shown on its card

    @property
    def target(self) -> str:
        return f"{self.module}.{self.name}"

    def directive(self, no_index: bool = False, prefix: str = "") -> str:
        "The card as a MyST directive (its methods nested inside a class's); `prefix`: before the name (`Class.`)."
        body = ([] if self.kind == "method" else [f":module: {self.module}"]) + ([":no-index:"] if no_index else []) \
            + ([f":value: {self.value}"] if self.value else [])
        text = "\n".join(body) + "\n\n" + self.doc
        for method in self.methods:
            text += "\n\n" + method.directive(no_index)
        fence = "`" * max(3, longest_backtick_run(text) + 1)
        return f"{fence}{{py:{self.kind}}} {prefix}{self.name}{self.signature}\n{text}\n{fence}"


def first_sentence(doc: str, most: int = 200) -> str:
    "A docstring's first sentence on one line (cut at a word near `most` characters), ready for a table cell."
    text = re.split(r"(?<=\.)\s", " ".join(doc.split()), maxsplit=1)[0].replace("|", "\\|")
    return text if len(text) <= most else text[:most].rsplit(" ", 1)[0] + " …"


def longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef, drop_self: bool = False) -> str:
    "`(arguments) -> returns` as written in the source."
    args = node.args
    if drop_self:        # `self` (or `cls`) never has a default, so the defaults still line up with the rest
        args = ast.arguments(posonlyargs=args.posonlyargs[1:], args=args.args[0 if args.posonlyargs else 1:],
                             vararg=args.vararg, kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults,
                             kwarg=args.kwarg, defaults=args.defaults)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"({ast.unparse(args)}){returns}"


def is_static(node: ast.FunctionDef) -> bool:
    return any(ast.unparse(d) == "staticmethod" for d in node.decorator_list)


def is_dataclass(node: ast.ClassDef) -> bool:
    return any(ast.unparse(d).split("(")[0] in ("dataclass", "dataclasses.dataclass") for d in node.decorator_list)


def class_signature(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> str:
    "The constructor's arguments: `__init__`'s, or a dataclass's fields (its bases' first), or nothing said."
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        return signature(init, drop_self=True)
    if is_dataclass(node):
        fields = []
        for base in reversed([classes[ast.unparse(b)] for b in node.bases if ast.unparse(b) in classes]):
            fields += dataclass_fields(base)
        fields += dataclass_fields(node)
        return "(" + ", ".join(fields) + ")"
    return ""


def dataclass_fields(node: ast.ClassDef) -> list[str]:
    return [f"{ast.unparse(n.target)}: {ast.unparse(n.annotation)}" + (f" = {ast.unparse(n.value)}" if n.value else "")
            for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def trailing_comment(lines: list[str], node: ast.stmt) -> str:
    """A constant's documentation, the first of: the comment lines right above it, the comments on its statement's
    first and last lines, the comment lines right below it."""
    above, row = [], node.lineno - 2
    while row >= 0 and lines[row].startswith("#") and not lines[row].startswith("# %%"):
        above.insert(0, lines[row][1:].strip())
        row -= 1
    statement = "\n".join(lines[node.lineno - 1:node.end_lineno]) + "\n"
    ends = {1, node.end_lineno - node.lineno + 1}
    trailing = [t.string[1:].strip() for t in tokenize.generate_tokens(io.StringIO(statement).readline)
                if t.type == tokenize.COMMENT and t.start[0] in ends]
    below = []
    for line in lines[node.end_lineno:]:
        if not line.startswith("#") or line.startswith("# %%"):
            break
        below.append(line[1:].strip())
    return " ".join(above or trailing or below)


def module_cards(path: Path, package: str = "deepminer") -> list[Card]:
    "The cards of the names in `__all__` of the module file `path`, in the module's order."
    source = path.read_text(encoding="utf-8")
    lines, tree = source.splitlines(), ast.parse(source)
    exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), [])
    markers = [(source.count("\n", 0, m.start()) + 1, m["notebook"], m["cell"]) for m in CELL_MARKER.finditer(source)]
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    module = f"{package}.{path.stem}"
    cards = []
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else \
            [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
        for name in (n for n in names if n in exported):
            _, notebook, cell = max((m for m in markers if m[0] <= node.lineno), default=(0, None, None))
            if notebook is None:
                continue
            if isinstance(node, ast.ClassDef):
                methods = [Card(module, n.name, notebook, cell, "method", signature(n, drop_self=not is_static(n)),
                                inspect.cleandoc(ast.get_docstring(n) or ""))
                           for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
                           and ast.get_docstring(n)]
                cards.append(Card(module, name, notebook, cell, "class", class_signature(node, classes),
                                  inspect.cleandoc(ast.get_docstring(node) or ""), methods))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                cards.append(Card(module, name, notebook, cell, "function", signature(node),
                                  inspect.cleandoc(ast.get_docstring(node) or "")))
            else:
                value = ast.unparse(node.value) if node.value is not None else ""
                cards.append(Card(module, name, notebook, cell, "data", "", trailing_comment(lines, node),
                                  value=value if len(value) <= 120 else ""))
    return cards


def all_cards(package_dir: Path) -> list[Card]:
    "Every exported name's card, module by module (files in name order)."
    return [card for path in sorted(package_dir.glob("*.py")) if not path.name.startswith("_")
            for card in module_cards(path, package_dir.name)]


def reference_page(cards: list[Card], titles: dict[str, str]) -> str:
    "The API reference page (MyST): per module, each name linked to its card, with its docstring's first sentence."
    text = ["# API reference", "",
            "Every public name of the `deepminer` package, module by module. Each links to its card in the lesson "
            "that defines it, right below the code; the site's search finds them by name.", ""]
    for module in dict.fromkeys(c.module for c in cards):
        in_module = [c for c in cards if c.module == module]
        notebook = in_module[0].notebook
        text += [f"## `{module}`", "", f"From [{titles.get(notebook, notebook)}]({notebook}.ipynb).", "",
                 "| name | what it is |", "|---|---|"]
        for card in in_module:
            first = first_sentence(card.doc) or (f"`{card.value}`" if card.value else "")
            text.append(f"| {{py:obj}}`{card.name} <{card.target}>` | {first} |")
        text.append("")
    return "\n".join(text)
