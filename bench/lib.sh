# bench/lib.sh: shell functions the bench/ drivers share.  Sourced, not run:
# a driver sets bench_name (e.g. "bench/store") and PY (the python3 that
# computes its statistics) and then sources this file.
#
# It provides the usage-error exit, argument checks, the quoted command line
# a report shows, the machine description every report starts with, and the
# writing of a report's section into a markdown file between the
# "<!-- NAME begin -->" and "<!-- NAME end -->" markers.
# shellcheck shell=bash disable=SC2154  # bench_name and PY come from the driver

die_usage() { # message...
  echo "$bench_name: $*" >&2
  echo "try: $bench_name --help" >&2
  exit 2
}

is_posint() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

bench_cmdline() { # args... ; prints "NAME ARGS" with the odd arguments quoted
  local line="$bench_name" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then line+=" $a"; else line+=" \"$a\""; fi
  done
  echo "$line"
}

abs_path() { # path ; relative to the current directory
  case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac
}

version_of() { # command... ; first line of its --version output, or n/a
  local v
  v=$(timeout 10 "$@" 2>&1 | head -n 1) || v=""
  echo "${v:-n/a}"
}

# Exports BENCH_DATE, BENCH_NPROC, BENCH_KERNEL, BENCH_CPU and BENCH_MEM for
# the report.
bench_export_machine() {
  local cpu_model mem_total
  cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
  mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
  BENCH_NPROC=$(nproc)
  BENCH_KERNEL=$(uname -sr)
  BENCH_CPU="${cpu_model:-unknown}"
  BENCH_MEM="${mem_total:-unknown}"
  export BENCH_DATE BENCH_NPROC BENCH_KERNEL BENCH_CPU BENCH_MEM
}

# Puts the text of SECTION_FILE between the markers of bench_name in
# OUT_FILE, replacing what was there; appends it (markers included) when the
# markers are absent, and creates OUT_FILE when it does not exist.  Nothing
# else in the file changes.
bench_write_section() { # section-file out-file
  "$PY" - "$bench_name" "$1" "$2" <<'PYEOF'
import os
import sys

name, section_path, out_path = sys.argv[1:]
begin, end = f"<!-- {name} begin -->", f"<!-- {name} end -->"
with open(section_path) as f:
    body = f.read().strip("\n")
section = f"{begin}\n{body}\n{end}\n"
if os.path.exists(out_path):
    with open(out_path) as f:
        text = f.read()
    b, e = text.find(begin), text.find(end)
    if b != -1 and e > b:
        rest = text[e + len(end):]
        if rest.startswith("\n"):
            rest = rest[1:]  # section already ends with a newline
        text = text[:b] + section + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
else:
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    text = "# Benchmarks\n\n" + section
with open(out_path, "w") as f:
    f.write(text)
PYEOF
}
