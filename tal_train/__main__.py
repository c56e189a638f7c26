"""``python -m tal_train`` = ``tal-train`` (the form ``torchrun -m tal_train`` launches)."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="tal-train")
