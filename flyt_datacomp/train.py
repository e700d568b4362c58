"""``python -m flyt_datacomp.train``: the ``train`` command (:mod:`flyt_datacomp.cli.train`)."""

if __name__ == "__main__":
    from .cli.train import main

    main()
