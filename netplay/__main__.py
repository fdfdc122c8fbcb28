from netplay.cli import run

run()
