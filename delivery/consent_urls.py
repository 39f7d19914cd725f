from django.urls import path

from delivery import consent_views

urlpatterns = [
    path("u/<str:token>", consent_views.unsubscribe_view, name="unsubscribe"),
    path("p/<str:token>", consent_views.preferences_view, name="preferences"),
]
