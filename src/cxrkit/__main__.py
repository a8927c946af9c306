from cxrkit.cli.app import main

main()
