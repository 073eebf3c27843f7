from pipelines.cli.main import app

app()
