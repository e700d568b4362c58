from . import main

main(prog_name="flyt-datacomp")
