"""ResNet Playground's web app (UI only). Built in the next issue; for now it trains from the command line:
`python -m resnet train --steps 300`."""

if __name__ == "__main__":
    raise SystemExit("The web app is not built yet: use `python -m resnet train`.")
