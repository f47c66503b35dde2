from cxr_triage.cli import main

main()
