"""``python -m papin``: the same command line as the ``papin`` script."""

from papin.cli.main import main

if __name__ == "__main__":
    main()
