from rodscli.cli import run

run()
