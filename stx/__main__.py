from stx.cli import main

main()
