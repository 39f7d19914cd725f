from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"

    def ready(self) -> None:
        from delivery import (
            receivers,  # noqa: F401 - connects the cleanup receivers
            seeds,
        )

        seeds.register()  # SMS and WhatsApp test sends from the campaign page and API
