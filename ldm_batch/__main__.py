from ldm_batch.cli import app

app(prog_name="ldm-batch")
