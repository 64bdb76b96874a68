"""``python -m fastloss``: print versions, build state and the backend each op would use."""
from fastloss._info import info

info()
