from ir_toolkit.cli.main import main

main()
