from clipgap_cli.cli import main

main()
