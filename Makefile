# vhdkit: build, test, demo, bench, install, corpus.
#   make demo   runs the main job on a bundled image (needs only cargo)
#   make test   installs the test tools when missing (as root), then runs the whole suite

CARGO ?= cargo
TEST_PACKAGES := qemu-utils ntfs-3g sleuthkit libhivex-bin libwin-hivex-perl fdisk gdisk attr xz-utils dosfstools time wimtools python3-pip python3-dev build-essential nodejs npm man-db bsdutils librsvg2-bin
TEST_TOOLS := qemu-img mkntfs ntfs-3g ntfscat fls ifind mmls hivexget hivexregedit hivexsh sfdisk sgdisk setfattr getfattr xz gzip mkfs.fat /usr/bin/time wimlib-imagex icat istat ntfsfix npm man script rsvg-convert
TEST_PYPI := libvhdi-python azure-storage-blob
DEMO_IMAGE := target/demo/xp-fixed.vhd
WINDOWS_TARGET := x86_64-pc-windows-gnu
# Where `make install` puts the tools, their man pages and shell completions.
PREFIX ?= $(HOME)/.local
TOOLS := vhdinspect vhdcompact vhdreg vhddisk

.PHONY: build test torture tools space lint demo bench install corpus clean

build:
	$(CARGO) build --release

# Installs the external tools the tests cross-check against, or says how to.
tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing test tools (missing:$$missing)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES) >/dev/null; \
	  else \
	    echo "missing test tools:$$missing"; \
	    echo "run as root: apt-get install -y $(TEST_PACKAGES)"; \
	    exit 1; \
	  fi; \
	fi
	@python3 -c "import pyvhdi, azure.storage.blob" 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(TEST_PYPI) (PyPI): an independent VHDX reader and Azure client for the tests"; \
	    python3 -m pip install --quiet --break-system-packages $(TEST_PYPI) >/dev/null; \
	  else \
	    echo "missing python modules; run: python3 -m pip install --user $(TEST_PYPI)"; exit 1; \
	  fi; }
	@command -v azurite-blob >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing azurite (npm), the Azure Storage emulator the upload tests use"; \
	    npm install -g --silent azurite >/dev/null; \
	  else \
	    echo "missing azurite; run: npm install -g azurite"; exit 1; \
	  fi; }

# Says so when the disk is short of what a first `make test` needs (the suite still runs).
space:
	@free=$$(df -Pm . | awk 'NR==2 {print $$4}'); tmp=$$(df -Pm "$${TMPDIR:-/tmp}" | awk 'NR==2 {print $$4}'); \
	if [ "$$free" -lt 4096 ] || [ "$$tmp" -lt 1200 ]; then \
	  echo "notice: $$free MB free here and $$tmp MB in $${TMPDIR:-/tmp}; a first make test needs about 4 GB (a failure may be 'No space left on device')"; \
	fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	RUSTFLAGS="-D warnings" $(CARGO) build --quiet --lib --no-default-features --target-dir target/lib-only
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --quiet --no-deps --lib
	@# Windows: the whole crate when the target and a MinGW C compiler (for rustls' ring) are
	@# here, the library alone with only the target, a notice otherwise.
	@if ! rustup target list --installed 2>/dev/null | grep -qx $(WINDOWS_TARGET); then \
	  echo "notice: not checking the Windows build (run: rustup target add $(WINDOWS_TARGET))"; \
	elif command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then \
	  echo "cargo check --target $(WINDOWS_TARGET) --lib --bins"; \
	  RUSTFLAGS="-D warnings" $(CARGO) check --quiet --target $(WINDOWS_TARGET) --lib --bins --target-dir target/windows; \
	else \
	  echo "notice: checking the Windows library only (the tools need apt-get install gcc-mingw-w64-x86-64)"; \
	  RUSTFLAGS="-D warnings" $(CARGO) check --quiet --target $(WINDOWS_TARGET) --lib --no-default-features --target-dir target/windows; \
	fi

# A first run needs about 4 GB free: 2.7 GB of build and up to 1.1 GB of test files at once.
test: tools space lint
	@[ -d ../shared/realdata ] || echo "notice: ../shared/realdata is absent: the tests that use real third-party images and hives are skipped"
	$(CARGO) test --features fault-injection,internals,schema

# The long runs of the integrity harness: more concurrent trials, power-cut states and crash
# points (figures in docs/integrity.md).
torture: tools
	@mkdir -p target
	VHDKIT_TORTURE=1 $(CARGO) test --release --features fault-injection --test integrity --test vhdreg \
	  -- --test-threads=1 --nocapture > target/torture.log 2>&1; status=$$?; \
	  grep -oE 'FIGURE: .*|test result.*|panicked.*' target/torture.log; exit $$status

$(DEMO_IMAGE): corpus/xp-fixed.vhd.gz
	mkdir -p $(dir $@)
	gzip -dc $< > $@

demo: $(DEMO_IMAGE)
	$(CARGO) build --release
	target/release/vhdinspect dump $(DEMO_IMAGE)
	target/release/vhdinspect map $(DEMO_IMAGE) --svg target/demo/map.svg | head -24
	target/release/vhdinspect align $(DEMO_IMAGE)
	rm -f target/demo/compacted.vhd
	target/release/vhdcompact $(DEMO_IMAGE) target/demo/compacted.vhd --to dynamic --zero-free --realign --verify
	target/release/vhdinspect align target/demo/compacted.vhd
	@echo "map picture: target/demo/map.svg; compacted and realigned image: target/demo/compacted.vhd"

bench: build tools
	python3 bench/run.py

install:
	$(CARGO) install --locked --path . --root $(PREFIX)
	mkdir -p $(PREFIX)/share/man/man1 $(PREFIX)/share/bash-completion/completions \
	  $(PREFIX)/share/zsh/site-functions $(PREFIX)/share/fish/vendor_completions.d
	for t in $(TOOLS); do \
	  $(PREFIX)/bin/$$t --generate man > $(PREFIX)/share/man/man1/$$t.1 && \
	  $(PREFIX)/bin/$$t --generate complete-bash > $(PREFIX)/share/bash-completion/completions/$$t && \
	  $(PREFIX)/bin/$$t --generate complete-zsh > $(PREFIX)/share/zsh/site-functions/_$$t && \
	  $(PREFIX)/bin/$$t --generate complete-fish > $(PREFIX)/share/fish/vendor_completions.d/$$t.fish || exit 1; \
	done

corpus:
	corpus/build.sh

clean:
	$(CARGO) clean
	rm -rf corpus/build
