"""What the consortium runs: rounds, aggregation, budget tracking, the synthetic-output store, the
privacy ledger, audit tools and reports, and the thin Flower ServerApp.

Never imports agent code that can read patient data.
"""
