"""What every part of tfscan shares: pytrees, input checks, the one cache, where a program
is being built, weak types, and errors raised inside a user's function."""
