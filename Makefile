# rtbridge — build, test, run, benchmark.
#
# Quiet by default (V=1 shows commands). Every flavour builds into its own
# directory, so switching between the plain, sanitizer and TSan builds never
# mixes objects; within a flavour a flag change rebuilds everything.
#
#   make                 build build/bin/rtbridge
#   make test            unit + integration tests (starts a throwaway PostgreSQL)
#   make check-san       the whole suite under ASan + UBSan
#   make check-tsan      the threaded tests under ThreadSanitizer
#   make run             embedded default: throwaway PostgreSQL, demo producer, server, tail
#   make bench           benchmarks and load scenarios in perf/, results in perf/RESULTS.md

CC       ?= cc
FLAVOUR  ?= plain
PREFIX   ?= /usr/local

ifeq ($(FLAVOUR),san)
  B       := build/san
  SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  OPT     := -O1 -g
else ifeq ($(FLAVOUR),tsan)
  B       := build/tsan
  SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer -DRT_TSAN=1
  OPT     := -O1 -g
else
  B       := build
  SANFLAGS :=
  OPT     := -O2 -g
endif

PKGS     := libuv libpq ck jansson libcrypto libjwt libcurl
LLHTTP_SRC := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

WARN     := -Wall -Wextra -Wstrict-prototypes -Werror
CPPFLAGS_ALL := -D_GNU_SOURCE -Ilib -I$(B)/gen -I$(LLHTTP_INC) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS_ALL   := -std=c11 $(OPT) $(WARN) -pthread $(SANFLAGS) $(CFLAGS)
LDLIBS_ALL   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lwslay -lm -pthread $(LDLIBS)
LDFLAGS_ALL  := $(SANFLAGS) $(LDFLAGS)

ifeq ($(V),1)
  Q :=
else
  Q := @
endif

LIB_SRC   := $(sort $(wildcard lib/*.c))
LIB_OBJ   := $(patsubst lib/%.c,$(B)/obj/lib/%.o,$(LIB_SRC))
GEN_SRC   := $(B)/gen/schema_sql.c
GEN_OBJ   := $(B)/obj/gen/schema_sql.o
WEB_FILES := $(sort $(wildcard lib/web/*))
WEB_SRC   := $(B)/gen/web_assets.c
WEB_OBJ   := $(B)/obj/gen/web_assets.o
LLHTTP_OBJ := $(patsubst %,$(B)/obj/llhttp/%.o,llhttp api http)
LIBRT     := $(B)/librtbridge.a

UNIT_SRC  := $(sort $(wildcard test/unit/*.c))
UNIT_BIN  := $(patsubst test/unit/%.c,$(B)/test/unit-%,$(UNIT_SRC))
INTEG_SRC := $(sort $(wildcard test/integ/*.c))
INTEG_BIN := $(patsubst test/integ/%.c,$(B)/test/integ-%,$(INTEG_SRC))
TESTLIB_SRC := $(sort $(wildcard test/support/*.c))
TESTLIB_OBJ := $(patsubst test/support/%.c,$(B)/obj/test/support/%.o,$(TESTLIB_SRC))
PERF_SRC  := $(sort $(wildcard perf/*.c))
PERF_BIN  := $(patsubst perf/%.c,$(B)/perf/%,$(PERF_SRC))

BIN := $(B)/bin/rtbridge
LOADGEN := $(B)/bin/rtbridge-loadgen

.PHONY: all bin run run-only test test-only check-san check-tsan bench bench-only clean install format tests perfs deps
all: $(BIN) $(LOADGEN)
# The server alone, in whichever FLAVOUR this make runs (check-tsan uses it:
# $(BIN) would be expanded by the calling make, in its own flavour).
bin: $(BIN)
tests: $(UNIT_BIN) $(INTEG_BIN)
perfs: $(PERF_BIN)

# Changing the compiler or flags rebuilds the flavour.
FLAGS_STAMP := $(B)/.flags
FLAGS_NOW := $(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(LDFLAGS_ALL)
$(shell mkdir -p $(B); if [ "$$(cat $(FLAGS_STAMP) 2>/dev/null)" != "$(FLAGS_NOW)" ]; then echo "$(FLAGS_NOW)" > $(FLAGS_STAMP); fi)

$(B)/obj/lib/%.o: lib/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(B)/obj/test/support/%.o: test/support/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) -Itest/support $(CFLAGS_ALL) -MMD -MP -c $< -o $@

# llhttp ships as C sources in Debian's node-llhttp; it is not our code, so
# it gets the project's sanitizers but not -Werror.
$(B)/obj/llhttp/%.o: $(LLHTTP_SRC)/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      llhttp/$*.c"
	$(Q)$(CC) -I$(LLHTTP_INC) -std=c11 $(OPT) -w $(SANFLAGS) -c $< -o $@

# The SQL migrations are embedded in the binary so a container needs no files.
$(GEN_SRC): $(sort $(wildcard schema/*.sql)) lib/schema-embed.sh
	@mkdir -p $(dir $@)
	@echo "  GEN     $@"
	$(Q)sh lib/schema-embed.sh $(sort $(wildcard schema/*.sql)) > $@.tmp && mv $@.tmp $@

$(GEN_OBJ): $(GEN_SRC) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -c $< -o $@

# The dashboard page and the JavaScript client (lib/web/) likewise; the
# directory is a prerequisite too, so adding or removing a file regenerates.
$(WEB_SRC): $(WEB_FILES) lib/web lib/web-embed.sh
	@mkdir -p $(dir $@)
	@echo "  GEN     $@"
	$(Q)sh lib/web-embed.sh $(WEB_FILES) > $@.tmp && mv $@.tmp $@

$(WEB_OBJ): $(WEB_SRC) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -c $< -o $@

$(LIBRT): $(LIB_OBJ) $(GEN_OBJ) $(WEB_OBJ) $(LLHTTP_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): cmd/rtbridge/main.c $(LIBRT)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(LDFLAGS_ALL) $< $(LIBRT) $(LDLIBS_ALL) -o $@

# The load generator (perf/loadgen.c) under the name operators use.
$(LOADGEN): $(B)/perf/loadgen
	@mkdir -p $(dir $@)
	$(Q)cp $< $@

$(B)/test/unit-%: test/unit/%.c $(LIBRT) $(TESTLIB_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(CPPFLAGS_ALL) -Itest/support $(CFLAGS_ALL) $(LDFLAGS_ALL) $< $(TESTLIB_OBJ) $(LIBRT) $(LDLIBS_ALL) -lcmocka -o $@

$(B)/test/integ-%: test/integ/%.c $(LIBRT) $(TESTLIB_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(CPPFLAGS_ALL) -Itest/support $(CFLAGS_ALL) $(LDFLAGS_ALL) $< $(TESTLIB_OBJ) $(LIBRT) $(LDLIBS_ALL) -lcmocka -o $@

$(B)/perf/%: perf/%.c $(LIBRT)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(LDFLAGS_ALL) $< $(LIBRT) $(LDLIBS_ALL) -o $@

.SECONDARY:

-include $(LIB_OBJ:.o=.d) $(TESTLIB_OBJ:.o=.d)

# ---- running ------------------------------------------------------------------

# `make run` and `make test` are the README's two commands: on a fresh Debian
# machine they first install what is missing (ops/install-deps.sh is a no-op
# when everything is there), then re-enter make so pkg-config sees it all.
run: deps
	@$(MAKE) --no-print-directory run-only

test: deps
	@$(MAKE) --no-print-directory test-only

run-only: $(BIN)
	@bash ops/run-embedded.sh $(BIN)

# test/run.sh starts one throwaway PostgreSQL for the whole run, runs every
# test binary and the shell tests, stops the cluster, and prints the closing
# "N passed, N failed" line.
test-only: $(BIN) $(LOADGEN) tests perfs test/js/node_modules/.installed
	@sh test/run.sh $(B) all

# The integration tests use clients that are not ours (npm ws, eventsource,
# pg), pinned by test/js/package-lock.json.
test/js/node_modules/.installed: test/js/package.json test/js/package-lock.json
	@echo "  NPM     test/js"
	$(Q)cd test/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

check-san: deps
	@$(MAKE) --no-print-directory FLAVOUR=san test-only

check-tsan: deps
	@$(MAKE) --no-print-directory FLAVOUR=tsan bin tests test/js/node_modules/.installed
	@TSAN_OPTIONS="suppressions=$(CURDIR)/test/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
		sh test/run.sh build/tsan threaded

bench: deps
	@$(MAKE) --no-print-directory bench-only

# Core benchmarks (bus, listener), then the fan-out scenarios of issue 4 with
# rtbridge-loadgen (each starts its own PostgreSQL and server; ~15 minutes).
bench-only: $(BIN) $(LOADGEN) perfs
	@bash perf/bench.sh $(B)
	@bash perf/scenarios.sh $(B)

install: $(BIN) $(LOADGEN)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/rtbridge
	install -m 0755 $(LOADGEN) $(DESTDIR)$(PREFIX)/bin/rtbridge-loadgen

deps:
	@bash ops/install-deps.sh

format:
	clang-format -i lib/*.c lib/*.h cmd/rtbridge/*.c test/unit/*.c test/integ/*.c test/support/*.c perf/*.c

clean:
	rm -rf build
