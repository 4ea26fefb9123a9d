from qtrace.cli import main

main()
