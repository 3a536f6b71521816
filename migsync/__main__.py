from migsync.cli import main

main()
