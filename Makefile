# The two commands of the README's quick start. Both set up everything they need first
# (Debian packages, a virtualenv in .venv) and are safe to run again.
.PHONY: demo test lint docs bench

demo:  ## set up, then scan the bundled demo mailbox with the bundled demo config
	@./scripts/bootstrap
	@./scripts/demo

test:  ## set up, then run lint, type checks and the whole test suite
	@./scripts/bootstrap
	@./scripts/test

docs:  ## regenerate docs/findings.md from the code
	.venv/bin/dsguard findings --markdown > docs/findings.md

bench:
	.venv/bin/python bench/scan.py
