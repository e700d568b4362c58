"""``python -m flyt_datacomp.filter``: the main job, the ``filter`` command (:mod:`flyt_datacomp.cli.filter`).

The library behind it is the selection pipeline, :mod:`flyt_datacomp.selection`.
"""

if __name__ == "__main__":
    from .cli.filter import main

    main()
