# ngx_cloudauth: build, run and test.
#
#   make            build build/ngx_http_cloudauth_module.so against Debian's
#                   nginx (nginx-dev)
#   make NGINX_SRC=/path/to/nginx-x.y.z
#                   build against that nginx source tree instead, configured
#                   as nginx.org's packages are (below), in a copy under
#                   build/x.y.z/: the module build/x.y.z/ngx_http_cloudauth_
#                   module.so and that tree's nginx, build/x.y.z/nginx/objs/
#                   nginx (make, run and test take NGINX_SRC alike)
#   make run        build and start nginx with conf.example on 127.0.0.1:8080
#   make test       build and run the test suite (prove -r t/), with a
#                   3-second smoke run of each fuzz target, after the
#                   shape check (make shape: no call circle between files);
#                   with NGINX_SRC against the nginx built from that tree
#   make test-matrix MATRIX="trixie sid 1.30 ..."
#                   make test against each of these nginx versions, their
#                   sources fetched from Debian's archive into build/src/
#                   by tools/nginx-src.sh
#   make fuzz       build the libFuzzer targets (fuzz/) and run each
#                   FUZZ_SECONDS seconds (default 60)
#   make deb        build the Debian package libnginx-mod-http-cloudauth
#                   (debian/, dpkg-buildpackage in build/deb/) into build/
#   make test-deb   build it, install it into Debian's nginx, check that
#                   nginx -t loads it, purge it again (tdeb/010-package.t)
#   make deb-trixie the package for Debian 13, built in a trixie chroot
#                   (build/chroot/trixie) into build/trixie/
#   make test-deb-trixie
#                   build it, install it into the chroot's nginx, nginx -t,
#                   serve a request with it, purge it (tdeb/020-trixie.t)
#   make test-chroot [CHROOT_SUITE=sid]
#                   make test in a chroot of that Debian release
#                   (build/chroot/sid), against its own nginx (sid: 1.30)

BUILD       = $(CURDIR)/build
MODULE      = $(BUILD)/ngx_http_cloudauth_module.so
DEBIAN_SRC  = /usr/share/nginx/src
CC_OPT      = -Wall -Wextra -Wno-unused-parameter -Werror
LD_OPT      =

# nginx.org's packages and official images (nginx -V): these modules,
# --with-compat, hardened.  Left out: the install paths and --user=nginx
# (Debian has no such user), which change neither the module nor what the
# tests run; added: --with-debug, as nginx.org's nginx-debug binary (same
# package; its only struct change, ngx_event_conf_t's debug_connection, is
# none a module sees), since the tests read debug lines.  The module built
# so loads into nginx.org's nginx and nginx-debug of the same version.
NGX_ORG_FLAGS = --with-compat --with-file-aio --with-threads \
    --with-http_addition_module --with-http_auth_request_module \
    --with-http_dav_module --with-http_flv_module \
    --with-http_gunzip_module --with-http_gzip_static_module \
    --with-http_mp4_module --with-http_random_index_module \
    --with-http_realip_module --with-http_secure_link_module \
    --with-http_slice_module --with-http_ssl_module \
    --with-http_stub_status_module --with-http_sub_module \
    --with-http_v2_module --with-http_v3_module \
    --with-mail --with-mail_ssl_module --with-stream \
    --with-stream_realip_module --with-stream_ssl_module \
    --with-stream_ssl_preread_module --with-debug
NGX_ORG_CC_OPT = -g -O2 -fstack-protector-strong -Wformat \
    -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 -fPIC
NGX_ORG_LD_OPT = -Wl,-z,relro -Wl,-z,now -Wl,--as-needed -pie

ifdef NGINX_SRC
# the tree's own version names its build directory: several coexist, and
# the user's tree is only read (copied into build/VERSION/nginx)
NGX_VERSION := $(shell sed -n 's/^\#define NGINX_VERSION *"\(.*\)"/\1/p' \
                 $(NGINX_SRC)/src/core/nginx.h 2>/dev/null)
ifeq ($(NGX_VERSION),)
$(error NGINX_SRC=$(NGINX_SRC): no nginx source tree (src/core/nginx.h))
endif
NGX_BUILD   = $(BUILD)/$(NGX_VERSION)
NGX_TREE    = $(NGX_BUILD)/nginx
NGX_FLAGS   = $(NGX_ORG_FLAGS)
CC_OPT     += $(NGX_ORG_CC_OPT)
LD_OPT     += $(NGX_ORG_LD_OPT)
MODULE      = $(NGX_BUILD)/ngx_http_cloudauth_module.so
NGX_BINARY  = $(NGX_TREE)/objs/nginx
TEST_ENV    = TEST_NGINX_BINARY=$(NGX_BINARY) TEST_NGINX_MODULE=$(MODULE)
RUN_ENV     = CLOUDAUTH_NGINX=$(NGX_BINARY)
else
NGX_BUILD   = $(BUILD)
NGX_TREE    = $(BUILD)/nginx
# an array, which newer nginx-dev (sid's) fills with quoted words
# (--with-cc-opt="$(dpkg-buildflags ...) -fPIC"): sourced by configure's
# shell and passed as such, never split again
NGX_FLAGS_LOAD = . $(DEBIAN_SRC)/conf_flags &&
NGX_FLAGS   = "$${NGX_CONF_FLAGS[@]}"
NGX_BINARY  =
TEST_ENV    =
RUN_ENV     =
endif

SOURCES     = config $(wildcard ngx_cloudauth_module/*.[ch])

SHELL       = /bin/bash

.PHONY: all deps test-deps run test test-asan test-valgrind bench clean shape \
        deb test-deb deb-trixie test-deb-trixie fuzz fuzz-deps fuzz-build \
        test-matrix

all: deps $(MODULE) $(NGX_BINARY)

deps:
	@tools/deps.sh build

test-deps:
	@tools/deps.sh test

$(NGX_TREE)/objs/Makefile: config
	rm -rf $(NGX_TREE) && mkdir -p $(NGX_BUILD)
	@# a tree of nginx.org's layout (configure at the top) or a clone of
	@# its repository (auto/configure); its objs/ is made anew
	if [ -n "$(NGINX_SRC)" ]; then \
	    cp -r $(NGINX_SRC) $(NGX_TREE) && rm -rf $(NGX_TREE)/objs && \
	    { [ -f $(NGX_TREE)/configure ] || \
	      cp $(NGX_TREE)/auto/configure $(NGX_TREE)/configure; }; \
	else \
	    cp -r $(DEBIAN_SRC) $(NGX_TREE); \
	fi
	cd $(NGX_TREE) && $(NGX_FLAGS_LOAD) ./configure $(NGX_FLAGS) \
	    --with-cc-opt="$(CC_OPT)" --with-ld-opt="$(LD_OPT)" \
	    --add-dynamic-module=$(CURDIR) \
	    > $(NGX_BUILD)/configure.log 2>&1 \
	    || { tail -30 $(NGX_BUILD)/configure.log; exit 1; }

$(MODULE): $(NGX_TREE)/objs/Makefile $(SOURCES)
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules
	mkdir -p $(NGX_BUILD)
	@# a new file renamed into place: an nginx running the old one keeps it
	cp $(NGX_TREE)/objs/ngx_http_cloudauth_module.so $(MODULE).new
	mv -f $(MODULE).new $(MODULE)

# the nginx binary of an NGINX_SRC tree (Debian's nginx otherwise)
ifdef NGINX_SRC
$(NGX_BINARY): $(NGX_TREE)/objs/Makefile
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile -j2 binary \
	    > $(NGX_BUILD)/make-nginx.log 2>&1 \
	    || { tail -30 $(NGX_BUILD)/make-nginx.log; exit 1; }
	$(NGX_BINARY) -V 2>&1 | head -1
endif

run: test-deps all
	@CLOUDAUTH_MODULE=$(MODULE) $(RUN_ENV) tools/run.pl

test: test-deps all fuzz-build shape
	$(TEST_ENV) prove -r t/

# make test against each nginx of MATRIX (trixie, sid, a version such as
# 1.30): its source from Debian's archive (tools/nginx-src.sh; NGINX_GIT=a
# clone of nginx's repository for what the archive does not serve), built
# in build/VERSION/.  (Not "NGINX": a variable given to make reaches the
# recipes' environment, and nginx reads NGINX there, the listening sockets
# of a binary upgrade.)
MATRIX ?= trixie sid

test-matrix:
	@for v in $(MATRIX); do \
	    src=$$(tools/nginx-src.sh $$v) || exit $$?; \
	    echo "== nginx $$v: $$src"; \
	    $(MAKE) --no-print-directory test NGINX_SRC=$$src || exit $$?; \
	done

# no call circle between the module's source files, read from the object
# files of the sources that config lists (tools/circles.pl)
MODULE_OBJS = $(NGX_TREE)/objs/addon/ngx_cloudauth_module
shape: all
	@tools/circles.pl $$(sed -n 's|.*CLOUDAUTH_DIR/\(.*\)\.c$$|$(MODULE_OBJS)/\1.o|p' \
	    config)

# libFuzzer targets of every parser of outside input (README.md, "Fuzzing"):
# nginx's core from Debian's source package and the module, built with
# clang, ASan and UBSan into build/fuzz
FUZZ_BUILD   = $(CURDIR)/build/fuzz
FUZZ_SECONDS = 60

fuzz-deps:
	@tools/deps.sh fuzz

fuzz-build: fuzz-deps
	@FUZZ_BUILD=$(FUZZ_BUILD) fuzz/build.sh

fuzz: fuzz-build
	FUZZ_BUILD=$(FUZZ_BUILD) fuzz/run.sh $(FUZZ_SECONDS)

bench: all
	@tools/deps.sh bench
	bench/run.sh

# the module built with AddressSanitizer, loaded into Debian's nginx with the
# ASan runtime preloaded (nginx itself is not instrumented)
ASAN_BUILD  = $(CURDIR)/build-asan
ASAN_LIB    = $$(gcc -print-file-name=libasan.so)

test-asan: test-deps
	$(MAKE) BUILD=$(ASAN_BUILD) \
	    CC_OPT="$(CC_OPT) -fsanitize=address -fno-omit-frame-pointer" \
	    LD_OPT="-fsanitize=address" $(ASAN_BUILD)/ngx_http_cloudauth_module.so
	@# the reports go where the workers (nobody, when root starts nginx)
	@# can write: not the checkout, which they may not even enter
	@logs=$$(mktemp -d /tmp/cloudauth-asan.XXXXXX) && \
	{ [ "$$(id -u)" != 0 ] || chown nobody $$logs; } && \
	TEST_NGINX_MODULE=$(ASAN_BUILD)/ngx_http_cloudauth_module.so \
	TEST_NGINX_PRELOAD=$(ASAN_LIB) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:log_path=$$logs/asan \
	    prove -r $(or $(TESTS),t/); rc=$$?; \
	if ls $$logs/asan.* >/dev/null 2>&1; then \
	    cat $$logs/asan.*; rm -rf $$logs; exit 1; \
	fi; \
	rm -rf $$logs; exit $$rc

test-valgrind: test-deps all
	TEST_NGINX_VALGRIND=1 prove -r t/

# the Debian package, built from a copy of the checkout in build/deb/src
# (dpkg-buildpackage writes into the parent directory, here build/deb/); the
# .deb is copied to build/, its -dbgsym package stays in build/deb/
DEB_WORK    = $(BUILD)/deb
DEB_PKG     = libnginx-mod-http-cloudauth

deb:
	@tools/deps.sh deb
	rm -rf $(DEB_WORK) && mkdir -p $(DEB_WORK)/src
	tar -C $(CURDIR) --exclude=./.git --exclude=./build --exclude=./build-asan \
	    --exclude=./t/browser/node_modules --exclude='./t/tmp*' -cf - . \
	    | tar -C $(DEB_WORK)/src -xf -
	cd $(DEB_WORK)/src && dpkg-buildpackage -b -us -uc \
	    > $(DEB_WORK)/build.log 2>&1 \
	    || { tail -40 $(DEB_WORK)/build.log; \
	         echo "full log: $(DEB_WORK)/build.log"; exit 1; }
	rm -f $(BUILD)/$(DEB_PKG)_*.deb
	cp $(DEB_WORK)/$(DEB_PKG)_*.deb $(BUILD)/
	lintian --fail-on error $(BUILD)/$(DEB_PKG)_*.deb
	@ls $(BUILD)/$(DEB_PKG)_*.deb

test-deb: deb
	prove tdeb/010-package.t

# the package for Debian 13 (trixie, nginx 1.26), built in a trixie chroot
# that debootstrap makes from deb.debian.org once and that is kept in
# TRIXIE_ROOT (tools/chroot.sh, tools/deb-chroot.sh); the .deb goes to
# build/trixie/. make test-deb-trixie installs it into the chroot's nginx,
# runs nginx -t with Debian 13's nginx.conf, serves an injected request
# against the fake token endpoint, and purges it (tdeb/020-trixie.t)
TRIXIE_ROOT = $(BUILD)/chroot/trixie
TRIXIE_DEB  = $(BUILD)/trixie

deb-trixie:
	@tools/deps.sh deb
	tools/deb-chroot.sh trixie $(TRIXIE_ROOT) $(TRIXIE_DEB)
	lintian --fail-on error $(TRIXIE_DEB)/$(DEB_PKG)_*.deb

test-deb-trixie: deb-trixie
	CLOUDAUTH_CHROOT=$(TRIXIE_ROOT) CLOUDAUTH_DEB_DIR=$(TRIXIE_DEB) \
	    prove tdeb/020-trixie.t

# make test inside a Debian chroot of CHROOT_SUITE (build/chroot/SUITE,
# made by debootstrap once and kept), against that release's own nginx and
# nginx-dev: for the nginx whose source Debian's archive does not serve here
# while its packages are (sid's 1.30, the matrix's "sid" leg in .ci/run).
# tools/test-chroot.sh; its log is build/chroot/SUITE/build/test.log
CHROOT_SUITE = sid

.PHONY: test-chroot
test-chroot:
	tools/test-chroot.sh $(CHROOT_SUITE) $(BUILD)/chroot/$(CHROOT_SUITE)

# (--one-file-system: what a killed make test-chroot left mounted in its
# chroot, the host's /dev, is never removed with it)
clean:
	rm -rf --one-file-system $(BUILD) $(ASAN_BUILD)
