"""Pictures a person looks at: contact sheets of person crops."""
