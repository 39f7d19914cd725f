from django.apps import AppConfig


class AudiencesConfig(AppConfig):
    name = "audiences"
    verbose_name = "Organisations and audiences"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_logged_in

        from audiences.login_limit import lockout_audit, reset_on_sign_in

        user_locked_out.connect(lockout_audit, dispatch_uid="audiences.login_limit.lockout_audit")
        user_logged_in.connect(reset_on_sign_in, dispatch_uid="audiences.login_limit.reset_on_sign_in")
