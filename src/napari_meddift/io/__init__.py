"""Reading and writing: CT volumes, landmark files, descriptor stores, the cache folder, hashes."""
