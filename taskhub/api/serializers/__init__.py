"""The API's request and response bodies, camelCase as the seed shows."""
