from django.apps import AppConfig


class AudiencesConfig(AppConfig):
    name = "audiences"
    verbose_name = "Organisations and audiences"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from audiences.login_limit import lockout_audit

        user_locked_out.connect(lockout_audit, dispatch_uid="audiences.login_limit.lockout_audit")
