from carmask.cli import main

main()
