"""HTTP routers, one per resource; they translate HTTP to `app.service.Service` calls and back."""
