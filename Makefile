# The two commands a new user needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOME_DIR ?= .ldm_batch

.PHONY: install demo test serve clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	LDM_BATCH_HOME=$(HOME_DIR) $(BIN)/ldm-batch run examples/campaign_small.csv --campaign demo
	LDM_BATCH_HOME=$(HOME_DIR) $(BIN)/ldm-batch store export $(HOME_DIR)/exported --prefix delivery/demo/
	@echo
	@echo "Images (S3, embedded SeaweedFS): s3://ldm-batch/delivery/demo/ - copies in $(HOME_DIR)/exported/"
	@echo "Audit log (SQLite):              $(HOME_DIR)/audit.db"
	@echo "Query it:   $(BIN)/ldm-batch audit query --campaign demo [--format json|csv|parquet --out FILE]"
	@echo "Verify it:  $(BIN)/ldm-batch audit verify"
	@echo "Review:     LDM_BATCH_HOME=$(HOME_DIR) $(BIN)/ldm-batch review list   (quarantined images)"

serve: install
	LDM_BATCH_HOME=$(HOME_DIR) $(BIN)/ldm-batch serve

test: install
	$(BIN)/python -m pytest -q --durations=25

clean:
	rm -rf $(HOME_DIR) .pytest_cache
