"""The program model: what a program file holds (cards, tender, award and loyalty
programs, their rules), validated by pydantic and loaded from YAML or JSON (loader)."""
