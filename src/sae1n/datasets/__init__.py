"""sae1n.datasets"""
