from cxrkit.cli import main

main()
