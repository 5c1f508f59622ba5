"""Sources of samples: each decodes its input and hands it to staging."""
