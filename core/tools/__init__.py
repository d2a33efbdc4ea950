"""What is not the product's runtime: the demo history seeder and the load run."""
