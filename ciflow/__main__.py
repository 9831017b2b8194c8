from ciflow.cli import main

main()
