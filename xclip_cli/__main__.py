"""``python -m xclip_cli`` (also what ``torchrun -m xclip_cli finetune`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
