"""Layer 4, training configs, published recipes, the trainers and the orchestration
that trains an experiment's runs. Imports only the layers below.
"""
