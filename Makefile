# agenthost — build, test, run.  See README.md.
#
#   make            build/agenthost, build/agenthost.so, build/libagenthost.a
#   make deps       install the Debian packages the build and tests need
#   make run        run the main job
#   make test       build and run every test
#   make asan       the same suite under AddressSanitizer + UBSan
#   make bench      benchmarks (bench/sched), results in docs/benchmarks.md

BUILD   ?= build
CC      ?= cc
PKGS    := lua5.4 libuv libcurl sqlite3
SAN     ?=
OPT     ?= -O2 -g

WARN    := -std=c99 -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes \
           -Wstrict-prototypes -Wpointer-arith -Wno-unused-parameter
ifeq ($(SAN),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1 -g
endif
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS  += $(OPT) $(WARN) -fPIC -D_POSIX_C_SOURCE=200809L $(SANFLAGS) $(PKG_CFLAGS)
LDFLAGS += $(SANFLAGS)

HOST_SRC := host/loop.c host/timer.c host/watch.c host/http.c host/sse.c host/store.c \
            host/proc.c
BIND_SRC := bindings/task.c bindings/reload.c bindings/http.c bindings/store.c bindings/agenthost.c \
            bindings/proc.c
CORE_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(HOST_SRC) $(BIND_SRC))
MAIN_OBJ := $(BUILD)/obj/bindings/main.o
CTESTS   := $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(wildcard tests/c/test_*.c))

DEB_PKGS := liblua5.4-dev lua5.4 libuv1-dev libcurl4-openssl-dev libsqlite3-dev \
            pkg-config lua-cjson lua-busted
# The MCP fixture's Streamable HTTP mode (tests/support/mcp_server.lua).
DEB_PKGS += lua-socket

.PHONY: all deps build run test asan bench clean ctests

all: deps build

build: $(BUILD)/agenthost $(BUILD)/agenthost.so $(BUILD)/libagenthost.a $(CTESTS) \
       $(if $(wildcard tests/support/httpd.c),$(BUILD)/tests/httpd)

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

$(BUILD)/obj/%.o: %.c host/host.h host/agenthost.h bindings/bindings.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libagenthost.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/agenthost: $(MAIN_OBJ) $(BUILD)/libagenthost.a
	$(CC) $(LDFLAGS) -o $@ $(MAIN_OBJ) $(BUILD)/libagenthost.a $(PKG_LIBS) -lm -ldl -Wl,-E

# The module for stock Lua: liblua symbols come from the interpreter.
$(BUILD)/agenthost.so: $(CORE_OBJ)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(filter-out -llua5.4,$(PKG_LIBS)) -ldl

$(BUILD)/tests/%: tests/c/%.c $(BUILD)/libagenthost.a tests/c/ctest.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libagenthost.a $(PKG_LIBS) -lm -ldl

# The local HTTP test server (tests/support): libuv only.
$(BUILD)/tests/httpd: tests/support/httpd.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(shell pkg-config --libs libuv)

run: all
	$(BUILD)/agenthost scripts/examples/seed_agent.lua

test: all
	@BUILD=$(BUILD) SAN=$(SAN) sh tests/run

asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 test

BENCH_DEB_PKGS := wrk python3-aiohttp
.PHONY: bench-deps bench-http

# The benchmark peers' packages.
bench-deps:
	$(call install_missing,$(BENCH_DEB_PKGS))

bench: all bench-deps
	bench/sched

bench-http: all bench-deps
	bench/http

clean:
	rm -rf build
