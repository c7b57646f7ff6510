"""The lab: Katran's example topology in network namespaces (``katran-lab``), reusable by tests.

``topology`` builds client / router / load balancer / reals; ``services`` runs the
gRPC server, katran-cli, small servers on the reals and the client traffic;
``demo`` is the walkthrough with its report.
"""
