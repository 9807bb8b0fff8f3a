module kiln.test/guests

go 1.19
