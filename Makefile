# agenthost — build, test, run.  See README.md.
#
#   make            build/agenthost, build/agenthost.so, build/libagenthost.a,
#                   build/libagenthost.so
#   make deps       install the Debian packages the build and tests need
#   make run        run the main job
#   make fleet-demo durable runs on 3 worker processes, one killed
#   make test       build and run every test
#   make asan       the same suite under AddressSanitizer + UBSan
#   make bench      the scheduler benchmark (bench/sched); bench-http,
#                   bench-store, bench-llm, bench-trace, bench-pg, bench-embed
#                   and bench-fleet run the others;
#                   every one writes its section of docs/benchmarks.md
#   make lib        build/libagenthost.a, build/libagenthost.so (with its
#                   soname links) and build/agenthost.pc
#   make install    header, both libraries, agenthost.pc, the Lua module
#                   and the command under PREFIX (/usr/local);
#                   DESTDIR stages them
#   make examples   the C examples, built from a PREFIX under build/ with
#                   only the installed header and pkg-config's flags
#   make rock       the Lua module for agenthost-*.rockspec (luarocks make
#                   runs it, then make rock-install)
#   make valgrind   the C tests under valgrind
#   make check-layers  fails when a layer reaches where it must not
#                   (DESIGN.md §1; run by make test)

BUILD   ?= build
CC      ?= cc
PKGS    := lua5.4 libuv libcurl sqlite3 libpq
SAN     ?=
OPT     ?= -O2 -g

WARN    := -std=c99 -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes \
           -Wstrict-prototypes -Wpointer-arith -Wno-unused-parameter
ifeq ($(SAN),1)
# AH_CHECKS: the scheduler asserts its state machine (bindings/sched.h).
# AH_ALLOC_SYSTEM: hosts use realloc/free, so that ASan sees every block
# (host/alloc.c is tested on its own, with its free blocks poisoned).
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
            -DAH_CHECKS -DAH_ALLOC_SYSTEM
OPT      := -O1 -g
endif
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# -MMD -MP: every object depends on the headers it includes.
CFLAGS  += $(OPT) $(WARN) -fPIC -D_POSIX_C_SOURCE=200809L -Iinclude -MMD -MP \
           $(SANFLAGS) $(PKG_CFLAGS)
LDFLAGS += $(SANFLAGS)

HOST_SRC := host/loop.c host/timer.c host/watch.c host/http.c host/sse.c host/store.c
HOST_SRC += host/post.c
HOST_SRC += host/buf.c
HOST_SRC += host/json.c
HOST_SRC += host/pg.c host/pgtype.c host/pgaddr.c
HOST_SRC += host/alloc.c
BIND_SRC := bindings/task.c bindings/errors.c bindings/group.c bindings/sync.c
BIND_SRC += bindings/drive.c bindings/args.c bindings/reload.c bindings/http.c bindings/store.c bindings/agenthost.c
BIND_SRC += bindings/embed.c
BIND_SRC += bindings/json.c
HOST_SRC += host/proc.c
BIND_SRC += bindings/proc.c
BIND_SRC += bindings/pg.c bindings/pglisten.c
BIND_SRC += bindings/scripts.c
CORE_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(HOST_SRC) $(BIND_SRC))
# The Lua library built in (bindings/scripts.c): scripts/agenthost/ and the
# bundled tools/, turned into C data at build time.
LUA_LIB  := $(sort $(wildcard scripts/agenthost/*.lua scripts/agenthost/*/*.lua))
LUA_TOOLS := $(sort $(wildcard tools/*.lua))
CORE_OBJ += $(BUILD)/gen/scripts_data.o
MAIN_OBJ := $(BUILD)/obj/cli/main.o
CTESTS   := $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(wildcard tests/c/test_*.c))

DEB_PKGS := liblua5.4-dev lua5.4 libuv1-dev libcurl4-openssl-dev libsqlite3-dev \
            pkg-config lua-cjson lua-busted luarocks
# The MCP fixture's Streamable HTTP mode (tests/support/mcp_server.lua).
DEB_PKGS += lua-socket openssl
# The fuzzers (tests/fuzz): clang's libFuzzer.
DEB_PKGS += clang
# tests/http_netns_spec.lua: network namespaces and a veth pair.
DEB_PKGS += iproute2
# The trace specs: node for the OTLP schema check and the browser driver
# (their npm packages: tests/support/package.json), headless Chromium for
# the timeline page.  npm comes with nodejs where that package ships it,
# else from Debian's npm.
DEB_PKGS += nodejs chromium
NPM_DEPS := tests/support/node_modules/.package-lock.json
# PostgreSQL: libpq for the binding, the server for the throwaway clusters
# of the pg specs (tests/support/pg.lua).
DEB_PKGS += libpq-dev postgresql

.PHONY: all deps build run test asan bench clean ctests

all: deps build

build: $(BUILD)/agenthost $(BUILD)/agenthost.so $(BUILD)/libagenthost.a $(BUILD)/libagenthost.so \
       $(CTESTS) \
       $(if $(wildcard tests/support/httpd.c),$(BUILD)/tests/httpd) \
       $(if $(wildcard tests/support/mockllm.c),$(BUILD)/tests/mockllm)

# Installs whichever Debian packages of $(1) are missing; nothing when all
# are present.  apt-get runs through sudo when not root.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory deps-npm-command
	@$(MAKE) --no-print-directory $(NPM_DEPS)

.PHONY: deps-npm-command
deps-npm-command:
	$(call install_missing,npm)

# The exact versions of tests/support/package-lock.json, without install
# scripts.
$(NPM_DEPS): tests/support/package.json tests/support/package-lock.json
	cd tests/support && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/gen/scripts_data.c: bindings/scripts_gen.lua $(LUA_LIB) $(LUA_TOOLS)
	@mkdir -p $(dir $@)
	lua5.4 bindings/scripts_gen.lua $@ $(addprefix scripts:,$(LUA_LIB)) \
	  $(addprefix tools:,$(LUA_TOOLS))

$(BUILD)/gen/scripts_data.o: $(BUILD)/gen/scripts_data.c bindings/scripts.h
	$(CC) $(CFLAGS) -Ibindings -c $< -o $@

-include $(CORE_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(CTESTS:=.d)

$(BUILD)/libagenthost.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The mock model server (tests/support/mockllm.c) built into the command,
# and only the command, as `agenthost --mock-llm`: the offline default model
# ships with it (scripts/agenthost/config.lua starts it that way).
MOCK_OBJ := $(BUILD)/obj/cli/mockllm.o
-include $(MOCK_OBJ:.o=.d)

$(MOCK_OBJ): tests/support/mockllm.c tests/support/httpd.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DAH_MOCKLLM_BUILTIN -c $< -o $@

$(BUILD)/agenthost: $(MAIN_OBJ) $(MOCK_OBJ) $(BUILD)/libagenthost.a
	$(CC) $(LDFLAGS) -o $@ $(MAIN_OBJ) $(MOCK_OBJ) $(BUILD)/libagenthost.a $(PKG_LIBS) -lm -ldl -Wl,-E

# The module for stock Lua: liblua symbols come from the interpreter.
$(BUILD)/agenthost.so: $(CORE_OBJ)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(filter-out -llua5.4,$(PKG_LIBS)) -ldl

$(BUILD)/tests/%: tests/c/%.c $(BUILD)/libagenthost.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libagenthost.a $(PKG_LIBS) -lm -ldl

# The local HTTP test server (tests/support): libuv only.
$(BUILD)/tests/httpd: tests/support/httpd.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(shell pkg-config --libs libuv)

# The mock LLM server: httpd.c with more routes (it includes httpd.c).
$(BUILD)/tests/mockllm: tests/support/mockllm.c tests/support/httpd.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(shell pkg-config --libs libuv)

run: all
	$(BUILD)/agenthost scripts/examples/ops_agent.lua

test: all check-layers fuzz-build
	@BUILD=$(BUILD) SAN=$(SAN) sh tests/run

# The layers of DESIGN.md §1: host/ knows libuv, libcurl, sqlite3 and libpq
# but never Lua; bindings/ marshals between Lua and host/ and never includes
# curl, sqlite or libpq; the command uses the public header and Lua only.
.PHONY: check-layers
check-layers:
	@bad=$$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](lua|lauxlib|lualib|luaconf)\.h' host/*.c host/*.h); \
	[ -z "$$bad" ] || { echo "check-layers: host/ must not use Lua:"; echo "$$bad"; exit 1; }; \
	bad=$$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](curl/|sqlite3|libpq-fe|postgresql/)' bindings/*.c bindings/*.h cli/*.c); \
	[ -z "$$bad" ] || { echo "check-layers: bindings/ and cli/ must not include curl, sqlite or libpq:"; echo "$$bad"; exit 1; }; \
	bad=$$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]*/)?(host|bindings|sched)\.h"' cli/*.c include/*.h); \
	[ -z "$$bad" ] || { echo "check-layers: cli/ and include/ use the public header only:"; echo "$$bad"; exit 1; }; \
	bad=$$(grep -nE '\bah__[a-z_]+\(' cli/*.c include/*.h); \
	[ -z "$$bad" ] || { echo "check-layers: cli/ and include/ must not call internal ah__ functions:"; echo "$$bad"; exit 1; }; \
	echo "check-layers: ok"

# ---- fuzzers (tests/fuzz) --------------------------------------------------
#
#   make fuzz               each libFuzzer harness for FUZZ_S seconds (60),
#                           then the Lua fuzzer with FUZZ_N cases (20000)
#   make fuzz-build         the harnesses only (make test builds them and runs
#                           each over its corpus; tests/run)
#
# A harness is tests/fuzz/<name>.c with LLVMFuzzerTestOneInput, linked with
# the host/ sources built again by clang with the same sanitizers; its
# seeds are tests/fuzz/corpus/<name>/.  A long run reads the seeds and
# writes what it finds under $(BUILD)/fuzz only (new inputs in
# work/<name>, crashes in artifacts/); copy an input worth keeping into the
# corpus by hand.  Without clang and its libFuzzer the build fails, and so
# does make test: fuzzers are never skipped.
FUZZ_CC      ?= clang
FUZZ_S       ?= 60
FUZZ_N       ?= 20000
FUZZ_NAMES   := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/*.c))
FUZZ_BINS    := $(addprefix $(BUILD)/fuzz/,$(FUZZ_NAMES))
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := -O1 -g $(WARN) -Wno-gnu-variable-sized-type-not-at-end -fPIC -D_POSIX_C_SOURCE=200809L -DAH_ALLOC_SYSTEM -Iinclude $(FUZZ_SAN) $(PKG_CFLAGS)
# The whole library, built by clang with the sanitizers and coverage (the
# JSON harness runs ah.json, which needs the bindings; the others use
# host/ only), on the system allocator so that ASan sees every block.
FUZZ_HOST_SRC := $(HOST_SRC) $(BIND_SRC)
FUZZ_HOST_OBJ := $(patsubst %.c,$(BUILD)/fuzz/obj/%.o,$(FUZZ_HOST_SRC)) $(BUILD)/fuzz/obj/gen/scripts_data.o

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(BUILD)/fuzz/obj/gen/scripts_data.o: $(BUILD)/gen/scripts_data.c bindings/scripts.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Ibindings -c $< -o $@

$(BUILD)/fuzz/libhost.a: $(FUZZ_HOST_OBJ)
	@rm -f $@
	ar rcs $@ $^

-include $(FUZZ_HOST_OBJ:.o=.d) $(FUZZ_BINS:=.d)

$(BUILD)/fuzz/%: tests/fuzz/%.c $(BUILD)/fuzz/libhost.a
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -MMD -MP -o $@ $< $(BUILD)/fuzz/libhost.a \
	  $(PKG_LIBS) -lm -ldl -lpthread

fuzz: all fuzz-build
	@failed=""; for n in $(FUZZ_NAMES); do \
	  mkdir -p $(BUILD)/fuzz/work/$$n $(BUILD)/fuzz/artifacts; \
	  echo "# fuzz $$n for $(FUZZ_S) s"; \
	  $(BUILD)/fuzz/$$n -max_total_time=$(FUZZ_S) -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/artifacts/$$n- \
	    $(BUILD)/fuzz/work/$$n tests/fuzz/corpus/$$n 2>$(BUILD)/fuzz/$$n.log; rc=$$?; \
	  grep -E '^(#[0-9]+.*DONE|stat::|SUMMARY|==[0-9]+==ERROR|[a-z]+: )' $(BUILD)/fuzz/$$n.log; \
	  [ $$rc -eq 0 ] || { echo "fuzz: $$n failed, see $(BUILD)/fuzz/$$n.log"; failed="$$failed $$n"; }; \
	done; \
	LUA_PATH="scripts/?.lua;scripts/?/init.lua;tools/?.lua;tests/?.lua;;" LUA_CPATH="$(BUILD)/?.so;;" \
	  lua5.4 tests/fuzz/lua_fuzz.lua --cases $(FUZZ_N) --seed $$(date +%s) --mutate-schemas || failed="$$failed lua_fuzz"; \
	[ -z "$$failed" ] || { echo "fuzz: failed:$$failed"; exit 1; }

asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 test

BENCH_DEB_PKGS := wrk python3-aiohttp python3-aiosqlite
# The charts of docs/benchmarks.md (bench/lib.sh: bench_chart).
BENCH_DEB_PKGS += gnuplot-nox
# bench/json compares ah.json with lua-dkjson (lua-cjson is in DEB_PKGS).
BENCH_DEB_PKGS += lua-dkjson
.PHONY: bench-deps bench-http bench-store bench-llm bench-json

# The benchmark peers' packages.
bench-deps:
	$(call install_missing,$(BENCH_DEB_PKGS))

bench: all bench-deps
	bench/sched

bench-http: all bench-deps
	bench/http

bench-store: all bench-deps
	bench/store

bench-llm: all
	bench/llm

.PHONY: bench-trace
bench-trace: all bench-deps
	bench/trace

bench-json: all bench-deps
	bench/json

# bench/pg's peers: asyncpg from Debian, node-postgres from npm
# (bench/package.json; bench/node_modules is not committed).
.PHONY: bench-pg
bench-pg: all bench-deps
	$(call install_missing,python3-asyncpg nodejs)
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory deps-npm-command
	cd bench && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	bench/pg

# The fleet (docs/fleet.md): `make fleet-demo` runs 3 workers on a throwaway
# PostgreSQL and kills one; bench-fleet compares it with DBOS Transact and
# pg-boss, installed from bench/package.json and its lock (npm ci).
.PHONY: fleet-demo bench-fleet bench-fleet-deps
fleet-demo: all
	$(BUILD)/agenthost scripts/examples/fleet_demo.lua

bench-fleet-deps: deps
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory deps-npm-command
	cd bench && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

bench-fleet: all bench-fleet-deps
	bench/fleet

clean:
	rm -rf build

# ---- the library for embedders -------------------------------------------

PREFIX  ?= /usr/local
VERSION := $(shell sed -n 's/^\#define AH_VERSION_STRING "\(.*\)"/\1/p' include/agenthost.h)
# The soname changes with AH_VERSION_MAJOR: libagenthost.so.0 names the
# real file libagenthost.so.0.1.0, and libagenthost.so (for -lagenthost)
# names libagenthost.so.0.
SOMAJOR := $(shell sed -n 's/^\#define AH_VERSION_MAJOR \([0-9]*\)$$/\1/p' include/agenthost.h)
SONAME  := libagenthost.so.$(SOMAJOR)
SOFILE  := libagenthost.so.$(VERSION)
EX_PREFIX := $(abspath $(BUILD))/examples/prefix
EXAMPLES  := game_loop automation_host

.PHONY: lib install examples valgrind bench-embed rock rock-install

# Writes the pkg-config file for prefix $(1) to $(2).  Libs links the
# shared library; `pkg-config --static --libs` adds Libs.private, what a
# program linking libagenthost.a needs besides it.  Lua is public (the
# header includes <lua.h> and host functions call the Lua API); the other
# libraries are private, named in Libs.private rather than Requires.private
# because libcurl's and sqlite3's own .pc files would then add the static
# libraries of their dependencies, which a program linking those two
# shared (as it does) does not need and which are often not installed.
define write_pc
	@mkdir -p $(dir $(2))
	@printf '%s\n' 'prefix=$(1)' 'libdir=$${prefix}/lib' \
	  'includedir=$${prefix}/include' '' \
	  'Name: agenthost' \
	  'Description: Lua 5.4 agent host: tasks with non-blocking timers, HTTP and SQLite' \
	  'Version: $(VERSION)' 'Requires: lua5.4' \
	  'Cflags: -I$${includedir}' 'Libs: -L$${libdir} -lagenthost' \
	  'Libs.private: -luv -lcurl -lsqlite3 -lpq -lm -ldl -lpthread' > $(2)
endef

lib: $(BUILD)/libagenthost.a $(BUILD)/libagenthost.so $(BUILD)/agenthost.pc

$(BUILD)/agenthost.pc: Makefile include/agenthost.h
	$(call write_pc,$(PREFIX),$@)

# The shared library exports the public API only (ah_ names, not the
# internal ah__ ones, and the luaopen_agenthost entry points); everything
# else is local to it.
$(BUILD)/libagenthost.map: Makefile
	@mkdir -p $(dir $@)
	@printf '%s\n' '{' '  global: ah_[a-z]*; luaopen_agenthost*;' '  local: *;' '};' > $@

# The same objects as libagenthost.a (they are -fPIC), linked with every
# library they use, liblua5.4 too: an embedder's program and the library
# share one Lua.
$(BUILD)/$(SOFILE): $(CORE_OBJ) $(BUILD)/libagenthost.map
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,-z,defs \
	  -Wl,--version-script,$(BUILD)/libagenthost.map -o $@ $(CORE_OBJ) \
	  $(PKG_LIBS) -lm -ldl -lpthread

$(BUILD)/$(SONAME): $(BUILD)/$(SOFILE)
	ln -sfn $(SOFILE) $@

$(BUILD)/libagenthost.so: $(BUILD)/$(SONAME)
	ln -sfn $(SONAME) $@

# Everything under $(DESTDIR)$(PREFIX); the .pc names PREFIX, since that is
# where the files are used from once a package built from DESTDIR is
# installed.
install: $(BUILD)/agenthost $(BUILD)/agenthost.so $(BUILD)/libagenthost.a \
         $(BUILD)/libagenthost.so
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/lib/lua/5.4
	install -m 755 $(BUILD)/agenthost $(DESTDIR)$(PREFIX)/bin/agenthost
	install -m 644 include/agenthost.h $(DESTDIR)$(PREFIX)/include/agenthost.h
	install -m 644 $(BUILD)/libagenthost.a $(DESTDIR)$(PREFIX)/lib/libagenthost.a
	install -m 755 $(BUILD)/$(SOFILE) $(DESTDIR)$(PREFIX)/lib/$(SOFILE)
	ln -sfn $(SOFILE) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(PREFIX)/lib/libagenthost.so
	install -m 755 $(BUILD)/agenthost.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/agenthost.so
	$(call write_pc,$(PREFIX),$(DESTDIR)$(PREFIX)/lib/pkgconfig/agenthost.pc)

# The examples see only what an embedder sees: the installed header and
# library, through pkg-config.  They link the static library on purpose
# (pkg-config --static, with -lagenthost turned into the archive, since
# the linker would take the .so beside it): they run from build/examples
# with no library path to set, and bench/embed measures ah_step linked as
# the agenthost command links it.
examples:
	@$(MAKE) --no-print-directory install PREFIX=$(EX_PREFIX) >/dev/null
	@for ex in $(EXAMPLES); do \
	  echo "cc examples/$$ex.c (pkg-config --static agenthost from $(EX_PREFIX))"; \
	  PKG_CONFIG_PATH=$(EX_PREFIX)/lib/pkgconfig; export PKG_CONFIG_PATH; \
	  $(CC) $(OPT) $(WARN) $(SANFLAGS) $$(pkg-config --cflags agenthost) \
	    -o $(BUILD)/examples/$$ex examples/$$ex.c \
	    $$(pkg-config --static --libs agenthost | sed 's/-lagenthost/-l:libagenthost.a/') || exit 1; \
	done

# The Lua module for a LuaRocks tree: agenthost-$(VERSION)-1.rockspec (build
# type make) runs `make rock`, then `make rock-install` with the rock's
# lib directory.  BUILD from the environment reuses a build directory.  The
# module carries the Lua library and the tools, so it is all the rock
# installs.
rock: $(BUILD)/agenthost.so

rock-install: rock
	@[ -n "$(INST_LIBDIR)" ] || \
	  { echo "rock-install: INST_LIBDIR must be set (luarocks sets it)"; exit 1; }
	install -d $(INST_LIBDIR)
	install -m 755 $(BUILD)/agenthost.so $(INST_LIBDIR)/agenthost.so

# The C tests under valgrind (fewer open/close rounds: valgrind is slow),
# hosts on realloc/free so that valgrind sees every block.
valgrind: all
	$(call install_missing,valgrind)
	@for t in $(CTESTS); do \
	  echo "# valgrind $$t"; \
	  AGENTHOST_ALLOC=system AH_TEST_OPENS=50 AH_TEST_ALLOC_STRIDE=401 valgrind -q --error-exitcode=99 --leak-check=full \
	    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
	    $$t > $(BUILD)/valgrind.out 2>&1; rc=$$?; \
	  grep -v '^ok ' $(BUILD)/valgrind.out; \
	  [ $$rc -eq 0 ] || { echo "valgrind: $$t failed ($$rc)"; exit 1; }; \
	done; echo "valgrind: clean"

$(BUILD)/bench/embed_step: bench/embed_step.c $(BUILD)/libagenthost.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libagenthost.a $(PKG_LIBS) -lm -ldl

bench-embed: all examples $(BUILD)/bench/embed_step
	bench/embed
