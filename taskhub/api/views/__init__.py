"""The API's viewsets: validate input with a serializer, call a service, render output."""
