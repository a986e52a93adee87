# bench/lib.sh: shell functions the bench/ drivers share.  Sourced, not run:
# a driver sets bench_name (e.g. "bench/store") and PY (the python3 that
# computes its statistics) and then sources this file.
#
# It provides the usage-error exit, argument checks, the quoted command line
# a report shows, the machine description every report starts with, the
# writing of a report's section into a markdown file between the
# "<!-- NAME begin -->" and "<!-- NAME end -->" markers, and the chart of
# one column of its table (bench_chart_column, set by the driver).
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
# else in the file changes.  When the driver sets bench_chart_column, the
# section first gets the chart of that column (bench_chart below).
bench_write_section() { # section-file out-file
  if [ -n "${bench_chart_column:-}" ]; then bench_chart "$1" "$2" "$bench_chart_column" || return 1; fi
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

# Draws one column of the first table in SECTION_FILE as an SVG bar chart
# (gnuplot): a bar per row at the median, a line over its (min–max)
# spread, labelled by the row's text cells; rows whose cell holds no number
# ("—", "failed") are left out, and the axis is logarithmic when the values
# span more than a factor of 100.  The chart is written to
# benchmarks/NAME.svg beside OUT_FILE (NAME: bench_name without "bench/"),
# and the section gets (or keeps, updated) a line showing it.
bench_chart() { # section-file out-file column
  local svg_dir svg name
  name=${bench_name#bench/}
  svg_dir="$(dirname "$2")/benchmarks"
  svg="$svg_dir/$name.svg"
  mkdir -p "$svg_dir"
  command -v gnuplot >/dev/null || { echo "$bench_name: gnuplot not found (make bench-deps)" >&2; return 1; }
  "$PY" - "$1" "$3" "$svg" "$name" <<'PYEOF' || return 1
import math, os, re, subprocess, sys, tempfile

section_path, column, svg, name = sys.argv[1:]
with open(section_path) as f:
    lines = f.read().split("\n")
rows, header, title = [], None, name
for line in lines:
    if line.startswith("## ") and title == name:
        title = line[3:].strip()
    if line.startswith("|"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        rows.append(cells)
    elif header is not None and rows:
        break
if header is None or column not in header:
    sys.exit(f"bench_chart: no table with a column {column!r} in {section_path}")
col = header.index(column)
num = r"-?[0-9][0-9,]*\.?[0-9]*"
data = []
for cells in rows:
    m = re.match(rf"^({num})(?:\s*\(({num})[–-]({num})\))?", cells[col].replace("**", ""))
    if not m:
        continue
    med = float(m.group(1).replace(",", ""))
    lo = float((m.group(2) or m.group(1)).replace(",", ""))
    hi = float((m.group(3) or m.group(1)).replace(",", ""))
    # The label: the cells left of the first figure with a spread (the
    # row's name: runtime and size, client and mode ...), dashes left out.
    first = next((i for i, c in enumerate(cells) if re.search(r"\(.*[–-].*\)", c)), col)
    label = " ".join(c for c in cells[:min(first, col) or 1] if c not in ("—", "-", ""))
    data.append((label or cells[0], med, lo, hi, cells[0]))
if not data:
    sys.exit(f"bench_chart: no numbers in column {column!r}")
positive = [d[2] for d in data if d[2] > 0] or [1.0]
log = bool(positive) and max(d[3] for d in data) / min(positive) > 100
base = 10 ** math.floor(math.log10(min(positive))) if log else 0
with tempfile.TemporaryDirectory() as tmp:
    dat = os.path.join(tmp, "data.tsv")
    with open(dat, "w") as f:
        palette = [0x2f7de1, 0x1aa37a, 0xe08a1e, 0x6b5bd6, 0xd62d20, 0x7f8c8d]
        groups = []
        for label, med, lo, hi, group in data:
            if group not in groups:
                groups.append(group)
            colour = palette[groups.index(group) % len(palette)]
            f.write(f"{label.replace(chr(34), '')}\t{med}\t{lo}\t{hi}\t{colour}\n")
    height = 90 + 26 * len(data)
    script = f'''
set terminal svg size 900,{height} dynamic font "sans,11" background "white"
set output "{svg}"
set title "{title.replace('"', "'")}"
set xlabel "{column.replace('"', "'")}{' (log scale)' if log else ''}"
set datafile separator "\\t"
set yrange [{len(data) - 0.4}:-0.6]
set ytics nomirror scale 0
set xtics nomirror
set grid xtics lc rgb "#dde1e7"
set border 3 lc rgb "#5a6473"
set style fill solid 0.85 noborder
set lmargin 34
unset key
{"set logscale x" if log else "set xrange [0:*]"}
plot "{dat}" using ({base} + ($2 - {base}) / 2):0:({base}):2:($0 - 0.32):($0 + 0.32):5:ytic(1) with boxxyerror lc rgb variable, \\
     "" using 2:0:3:4 with xerrorbars lc rgb "#1d2330" pt 7 ps 0.3
'''
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
link = f"![{title}](benchmarks/{name}.svg)"
out = [l for l in lines if not l.startswith(f"![") or f"(benchmarks/{name}.svg)" not in l]
while out and out[-1] == "":
    out.pop()
# The chart goes right after the section's title line.
for i, l in enumerate(out):
    if l.startswith("## "):
        out[i + 1:i + 1] = ["", link]
        break
else:
    out += ["", link]
with open(section_path, "w") as f:
    f.write("\n".join(out) + "\n")
PYEOF
}
