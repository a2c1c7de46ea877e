from loradial.cli import main

main()
