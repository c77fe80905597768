from ir_toolkit.cli.entry import run

run()
